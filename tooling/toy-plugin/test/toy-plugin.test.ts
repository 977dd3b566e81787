import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, createLoraRegistry, initRuntime, Linear, LoraError, loadAdapter, Module, saveAdapter, readSafetensorsFile, train } from '@lora/core';
import { describeAdapterPlugin, expectTensorsClose, withoutTensorLeaks } from '@lora/core/testing';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error -- a plain-JS package with no type declarations, as a third party might ship
import { pluginPackage, toy } from '../index.js';

// The conformance suite every @lora plugin runs, on a plugin that lives outside every @lora package.
describeAdapterPlugin(toy({ seed: 3 }), {
  withSeed: (seed: number) => toy({ seed }),
  validConfig: { targetModules: ['query', 'conv'] },
  invalidConfigs: [{ r: 4 }, { requireGain: 'yes' }, { targetModules: 42 }],
});

class Block extends Module {
  readonly query: Linear;
  constructor() {
    super();
    this.query = this.registerModule('query', new Linear({ inFeatures: 6, outFeatures: 4, seed: 1 }));
  }
  forward(x: tf.Tensor): tf.Tensor {
    return this.query.forward(x);
  }
}

function toyModel(config: Record<string, unknown>): AdapterModel<Block> {
  const adapterModel = AdapterModel.create(new Block(), {
    registry: createLoraRegistry({ plugins: [toy({ seed: 1 })] }),
    plugin: 'toy',
    config: { targetModules: ['query'], ...config },
  });
  for (const [, instance] of adapterModel.adapterInstances('default')) {
    for (const [, variable] of instance.namedTensors()) tf.tidy(() => variable.assign(tf.randomNormal(variable.shape, 0, 1, 'float32', 5)));
  }
  adapterModel.model.eval();
  return adapterModel;
}

describe('a third-party plugin through core v2', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('is described by its own descriptor', () => {
    expect(pluginPackage.packageName).toBe('@lora-internal/toy-plugin');
    expect(pluginPackage.plugins.map((entry: { name: string }) => entry.name)).toEqual(['toy']);
  });

  it('reads a per-forward input per batch row: mixed rows equal each row run alone', async () => {
    await withoutTensorLeaks(() => {
      const adapterModel = toyModel({});
      const x = tf.randomNormal([3, 2, 6], 0, 1, 'float32', 9);
      const mixed = adapterModel.forward({ toyGain: [0, 1, 2.5] }, x) as tf.Tensor;
      const rows = [0, 1, 2.5].map((gain, row) =>
        tf.tidy(() => adapterModel.forward({ toyGain: gain }, tf.slice(x, [row, 0, 0], [1, 2, 6])) as tf.Tensor),
      );
      const stacked = tf.concat(rows, 0);
      expectTensorsClose(mixed, stacked, { atol: 1e-6, rtol: 1e-6 });
      // Gain 0 is the base model exactly.
      const base = tf.tidy(() => adapterModel.disableAdapters(() => adapterModel.model.forward(tf.slice(x, [0, 0, 0], [1, 2, 6]))));
      expectTensorsClose(rows[0]!, base, { atol: 0, rtol: 0 });
      tf.dispose([x, mixed, stacked, base, ...rows]);
      adapterModel.dispose();
    });
  });

  it('fails with a clear error when a required input is missing', async () => {
    await withoutTensorLeaks(() => {
      const adapterModel = toyModel({ requireGain: true });
      const x = tf.ones([1, 2, 6]);
      expect(() => adapterModel.model.forward(x)).toThrow(LoraError);
      expect(() => adapterModel.model.forward(x)).toThrow(/needs the per-forward input toyGain/u);
      const y = adapterModel.forward({ toyGain: [2] }, x) as tf.Tensor;
      expect(y.shape).toEqual([1, 2, 4]);
      tf.dispose([x, y]);
      adapterModel.dispose();
    });
  });

  it('saves its adapter-level variable once and trains it with train({ model: adapterModel })', async () => {
    const directory = await mkdtemp(path.join(tmpdir(), 'lora-toy-'));
    try {
      await withoutTensorLeaks(async () => {
        const adapterModel = toyModel({});
        const shared = adapterModel.adapterState('default')!.namedTensors!()[0]![1];
        expect(adapterModel.namedTrainableVariables().map(([name]) => name)).toContain('default::toy.shared_scale');
        const inputs = tf.randomNormal([2, 2, 6], 0, 1, 'float32', 8);
        const before = shared.dataSync()[0]!;
        await train({ model: adapterModel, steps: 2, learningRate: 0.1, trainData: [inputs], lossFn: (x) => tf.mean(tf.square(adapterModel.forward({ toyGain: 1 }, x) as tf.Tensor)) as tf.Scalar });
        expect(shared.dataSync()[0]).not.toBe(before);
        inputs.dispose();
        adapterModel.model.eval();
        await saveAdapter(adapterModel, directory);
        const file = await readSafetensorsFile(path.join(directory, 'adapter_model.safetensors'));
        expect([...file.tensors.keys()].filter((key) => key.includes('shared_scale'))).toEqual(['toy.shared_scale']);
        const fresh = new AdapterModel(new Block(), { registry: createLoraRegistry({ plugins: [toy()] }) });
        await loadAdapter(fresh, directory);
        fresh.model.eval();
        const x = tf.randomNormal([2, 2, 6], 0, 1, 'float32', 4);
        const expected = adapterModel.forward({ toyGain: [1, 3] }, x) as tf.Tensor;
        const actual = fresh.forward({ toyGain: [1, 3] }, x) as tf.Tensor;
        expectTensorsClose(actual, expected, { atol: 1e-6, rtol: 1e-6 });
        tf.dispose([x, expected, actual]);
        fresh.dispose();
        adapterModel.dispose();
      });
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });
});
