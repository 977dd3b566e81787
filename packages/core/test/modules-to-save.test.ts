import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { AdapterModel, ConfigError, createLoraRegistry, initRuntime, LayerNorm, Linear, loadAdapter, lora, Module, ModulesToSaveWrapper, saveAdapter } from '../src/index.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

class NormedBlock extends Module {
  readonly proj: Linear;
  readonly norm: LayerNorm;
  constructor() {
    super();
    this.proj = this.registerModule('proj', new Linear({ inFeatures: 6, outFeatures: 6, seed: 2 }));
    this.norm = this.registerModule('norm', new LayerNorm({ dim: 6 }));
  }
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.norm.forward(this.proj.forward(x)));
  }
}

const registry = createLoraRegistry({ plugins: [lora({ seed: 1 })] });

describe('Module.clone', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('copies every variable into a new one, keeps the class and fields, and shares what was shared', async () => {
    await withoutTensorLeaks(() => {
      const block = new NormedBlock();
      const copy = block.clone() as NormedBlock;
      expect(copy).toBeInstanceOf(NormedBlock);
      expect(copy.norm).toBe(copy.getSubmodule('norm'));
      expect(copy.norm).not.toBe(block.norm);
      const originals = block.namedParameters();
      const copies = copy.namedParameters();
      expect(copies.map(([name]) => name)).toEqual(originals.map(([name]) => name));
      copies.forEach(([, variable], i) => {
        expect(variable).not.toBe(originals[i]![1]);
        expectTensorsClose(variable, originals[i]![1], { atol: 0, rtol: 0 });
      });
      tf.tidy(() => copy.norm.weight.assign(tf.fill([6], 3)));
      expect(block.norm.weight.dataSync()[0]).toBe(1);
      copy.dispose();
      block.dispose();
    });
  });
});

describe('modules_to_save', () => {
  it('trains and saves a copy of any module (a LayerNorm), and loads it back to the same outputs', async () => {
    const directory = await mkdtemp(path.join(tmpdir(), 'lora-mts-'));
    try {
      await withoutTensorLeaks(async () => {
        const adapterModel = AdapterModel.create(new NormedBlock(), { registry, config: { targetModules: ['proj'], modulesToSave: ['norm'] } });
        expect(adapterModel.model.getSubmodule('norm')).toBeInstanceOf(ModulesToSaveWrapper);
        const trainable = adapterModel.namedTrainableVariables().map(([name]) => name);
        expect(trainable).toEqual(expect.arrayContaining(['norm.modules_to_save.default.weight', 'norm.modules_to_save.default.bias']));
        const copy = (adapterModel.model.getSubmodule('norm') as ModulesToSaveWrapper).copy('default') as LayerNorm;
        tf.tidy(() => copy.weight.assign(tf.randomNormal([6], 1, 0.3, 'float32', 4)));
        adapterModel.model.eval();
        const x = tf.randomNormal([2, 6], 0, 1, 'float32', 3);
        const expected = adapterModel.model.forward(x);
        await saveAdapter(adapterModel, directory);
        const fresh = new AdapterModel(new NormedBlock(), { registry });
        await loadAdapter(fresh, directory);
        fresh.model.eval();
        const actual = fresh.model.forward(x);
        expectTensorsClose(actual, expected, { atol: 1e-6, rtol: 1e-6 });
        const base = fresh.disableAdapters(() => fresh.model.forward(x));
        expect(tf.tidy(() => tf.max(tf.abs(tf.sub(base, actual))).dataSync()[0]!)).toBeGreaterThan(1e-3);
        tf.dispose([x, expected, actual, base]);
        fresh.dispose();
        adapterModel.dispose();
      });
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });

  it('refuses a name that matches no module, naming it, and leaves the model unchanged', async () => {
    await withoutTensorLeaks(() => {
      const model = new NormedBlock();
      const adapterModel = new AdapterModel(model, { registry });
      let caught: unknown;
      try {
        adapterModel.addAdapter('default', { config: { targetModules: ['proj'], modulesToSave: ['classifier_head'] } });
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(ConfigError);
      expect((caught as ConfigError).field).toBe('modulesToSave');
      expect((caught as Error).message).toContain('classifier_head');
      expect(model.getSubmodule('proj')).toBeInstanceOf(Linear);
      expect(adapterModel.adapterNames).toEqual([]);
      adapterModel.dispose();
    });
  });
});
