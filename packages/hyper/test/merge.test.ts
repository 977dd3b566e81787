import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AdapterModel, createLoraRegistry, initRuntime, loadAdapterModel, lora, LoraError } from '@lora/core';
import { expectTensorsClose, maxAbsoluteError, withoutTensorLeaks } from '@lora/core/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HyperLoraState} from '../src/index.js';
import { hyper, saveHyperLoraAsLora } from '../src/index.js';
import { randomizeGenerator, TinyModel, tinyConfig } from './helpers.js';

let directory: string;

beforeAll(async () => {
  await initRuntime();
  directory = await mkdtemp(path.join(tmpdir(), 'hyper-merge-'));
});

afterAll(async () => {
  await rm(directory, { recursive: true, force: true });
});

function hyperAdapterModel(): { peft: AdapterModel<TinyModel>; state: HyperLoraState } {
  const registry = createLoraRegistry({ plugins: [lora(), hyper({ seed: 2 })] });
  const peft = AdapterModel.create(new TinyModel(1), { registry, plugin: 'hyper', config: tinyConfig() });
  const state = peft.adapterState('default') as HyperLoraState;
  randomizeGenerator(state);
  peft.model.eval();
  return { peft, state };
}

describe('merging a HyperLoRA', () => {
  it('refuses with a one-line LoraError that names the fix (export a condition, merge that)', async () => {
    await withoutTensorLeaks(() => {
      const { peft } = hyperAdapterModel();
      let caught: unknown;
      try {
        peft.mergeAndUnload();
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(LoraError);
      const message = (caught as LoraError).message;
      expect(message).not.toContain('\n');
      expect(message).toContain('"default" cannot be merged');
      expect(message).toContain('exportHyperLoraAsLora');
      expect(message).toContain('lora export --adapter <dir> --condition factor=value --out <lora dir>');
      // Nothing was merged or unloaded: the model still varies by condition.
      expect(peft.adapterLayers().every(([, layer]) => layer.mergedAdapters.length === 0)).toBe(true);
      peft.dispose();
    });
  });

  it('is all or nothing beside another adapter: a plain LoRA merged before the refusal is taken out again (W + ΔW − ΔW: float32 rounding only)', async () => {
    await withoutTensorLeaks(() => {
      const { peft } = hyperAdapterModel();
      // Registered first, so in every layer it is merged before the HyperLoRA refuses.
      peft.addAdapter('plain', { plugin: 'lora', config: { r: 2, loraAlpha: 4, targetModules: ['q', 'v'], initLoraWeights: false } });
      peft.setAdapter(['plain', 'default']);
      const x = tf.randomNormal([2, 3, 6], 0, 1, 'float32', 4);
      const weightsOf = (): Float32Array[] => tf.tidy(() => peft.adapterLayers().map(([, layer]) => layer.base_layer.denseWeight().dataSync() as Float32Array));
      const weightsBefore = weightsOf();
      const before = peft.withAdapterInputs({ condition: { src: 'de', tgt: 'en' } }, () => peft.model.forward(x));
      expect(() => peft.merge({ adapterNames: ['plain', 'default'] })).toThrow(LoraError);
      expect(peft.adapterLayers().every(([, layer]) => layer.mergedAdapters.length === 0)).toBe(true);
      weightsOf().forEach((weight, i) => expectTensorsClose(weight, weightsBefore[i]!, { atol: 1e-6, rtol: 0 }));
      const after = peft.withAdapterInputs({ condition: { src: 'de', tgt: 'en' } }, () => peft.model.forward(x));
      expectTensorsClose(after, before, { atol: 1e-5, rtol: 0 });
      // The plain LoRA alone merges (the test's premise: it changes the weights).
      peft.merge({ adapterNames: ['plain'] });
      expect(weightsOf().some((weight, i) => weight.some((v, j) => Math.abs(v - weightsBefore[i]![j]!) > 1e-3))).toBe(true);
      tf.dispose([x, before, after]);
      peft.dispose();
    });
  });

  it('merges an exported condition: the merged plain model gives the HyperLoRA’s logits for it (max abs diff < 1e-5)', async () => {
    await withoutTensorLeaks(async () => {
      const { peft } = hyperAdapterModel();
      const condition = { src: 'de', tgt: 'en' };
      const x = tf.randomNormal([2, 3, 6], 0, 1, 'float32', 9);
      const expected = peft.withAdapterInputs({ condition }, () => peft.model.forward(x));
      const target = path.join(directory, 'de-en');
      await saveHyperLoraAsLora(peft, target, { condition });
      const loaded = await loadAdapterModel(new TinyModel(1), target, { registry: createLoraRegistry({ plugins: [lora()] }) });
      const merged = loaded.mergeAndUnload();
      merged.eval();
      const actual = merged.forward(x);
      expect(maxAbsoluteError(actual.dataSync(), expected.dataSync())).toBeLessThan(1e-5);
      tf.dispose([x, expected, actual]);
      merged.dispose();
      peft.dispose();
    });
  });

  it('gives ΔW of an explicit condition as s·B(c)·A(c), equal to the exported plain LoRA’s (1e-6)', async () => {
    await withoutTensorLeaks(() => {
      const { peft, state } = hyperAdapterModel();
      const condition = { src: 'fr', tgt: null };
      const exported = state.exportFactors(condition);
      exported.forEach(({ loraA, loraB }, j) => {
        const delta = state.deltaWeight(j, condition);
        const reference = tf.tidy(() => tf.mul(tf.matMul(loraB, loraA), state.scaling));
        expect(maxAbsoluteError(delta.dataSync(), reference.dataSync())).toBeLessThan(1e-6);
        tf.dispose([delta, reference, loraA, loraB]);
      });
      peft.dispose();
    });
  });
});
