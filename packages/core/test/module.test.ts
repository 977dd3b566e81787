import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { Dropout, Embedding, initRuntime, LayerNorm, Linear, Module, ModuleError, ModuleList, RMSNorm } from '../src/index.js';
import { expectTensorsClose } from '../src/testing.js';

class Tied extends Module {
  readonly wte: Embedding;
  readonly blocks: ModuleList<Linear>;
  readonly head: Linear;

  constructor() {
    super();
    this.wte = this.registerModule('wte', new Embedding({ numEmbeddings: 10, embeddingDim: 4, seed: 1 }));
    this.blocks = this.registerModule('blocks', new ModuleList([new Linear({ inFeatures: 4, outFeatures: 4 }), new Linear({ inFeatures: 4, outFeatures: 4 })]));
    this.head = this.registerModule('head', new Linear({ inFeatures: 4, outFeatures: 10, bias: false }));
    // Tie the head to the embedding, as GPT-2 does.
    this.head.weight.dispose();
    (this.head as unknown as { weight: tf.Variable }).weight = this.wte.weight;
    (this.head as unknown as { registerParameter(n: string, v: tf.Variable): void }).registerParameter('weight', this.wte.weight);
  }
}

describe('Module', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('lists modules and parameters with dotted paths in registration order, shared variables once', () => {
    const model = new Tied();
    expect(model.namedModules().map(([p]) => p)).toEqual(['', 'wte', 'blocks', 'blocks.0', 'blocks.1', 'head']);
    expect(model.namedParameters().map(([p]) => p)).toEqual(['wte.weight', 'blocks.0.weight', 'blocks.0.bias', 'blocks.1.weight', 'blocks.1.bias']);
    expect(model.parameterCount()).toBe(40 + 2 * 20);
    model.dispose();
  });

  it('gets and replaces submodules, updating the field that held the old one', () => {
    const model = new Tied();
    const replacement = new Linear({ inFeatures: 4, outFeatures: 4 });
    const old = model.setSubmodule('blocks.1', replacement);
    expect(model.getSubmodule('blocks.1')).toBe(replacement);
    expect(model.blocks.get(1)).toBe(replacement);
    const head = new Linear({ inFeatures: 4, outFeatures: 10 });
    model.setSubmodule('head', head);
    expect(model.head).toBe(head);
    old.dispose();
    model.dispose();
  });

  it('names the missing segment when a path does not exist', () => {
    const model = new Tied();
    expect(() => model.getSubmodule('blocks.7.weight')).toThrow(ModuleError);
    expect(() => model.getSubmodule('blocks.7')).toThrow(/"blocks.7" does not exist. Children there: 0, 1/u);
    model.dispose();
  });

  it('freezes by flag and switches train/eval recursively', () => {
    const model = new Tied();
    model.setTrainable(false);
    expect(model.trainableVariables()).toHaveLength(0);
    model.blocks.get(0).setTrainable(true);
    expect(model.trainableVariables()).toHaveLength(2);
    model.eval();
    expect(model.namedModules().every(([, m]) => !m.training)).toBe(true);
    model.train();
    expect(model.blocks.get(1).training).toBe(true);
    model.dispose();
  });

  it('computes LayerNorm and RMSNorm as their definitions', () => {
    const x = tf.tensor2d([[1, 2, 3, 4], [-1, 0, 5, 2]]);
    const layerNorm = new LayerNorm({ dim: 4, eps: 1e-5 });
    const rmsNorm = new RMSNorm({ dim: 4, eps: 1e-6 });
    const rows = [[1, 2, 3, 4], [-1, 0, 5, 2]];
    const expectedLayer = rows.flatMap((row) => {
      const mean = row.reduce((a, b) => a + b) / 4;
      const variance = row.reduce((a, b) => a + (b - mean) ** 2, 0) / 4;
      return row.map((v) => (v - mean) / Math.sqrt(variance + 1e-5));
    });
    const expectedRms = rows.flatMap((row) => {
      const rms = Math.sqrt(row.reduce((a, b) => a + b * b, 0) / 4 + 1e-6);
      return row.map((v) => v / rms);
    });
    expectTensorsClose(layerNorm.forward(x), expectedLayer, { atol: 1e-5, rtol: 1e-5 });
    expectTensorsClose(rmsNorm.forward(x), expectedRms, { atol: 1e-5, rtol: 1e-5 });
  });

  it('applies dropout only in training mode, scaling kept values by 1/(1-p)', () => {
    const layer = new Dropout(0.5);
    const x = tf.ones([1000]);
    const y = layer.forward(x).dataSync();
    const kept = Array.from(y).filter((v) => v !== 0);
    expect(kept.every((v) => Math.abs(v - 2) < 1e-6)).toBe(true);
    expect(kept.length).toBeGreaterThan(400);
    expect(kept.length).toBeLessThan(600);
    layer.eval();
    expect(layer.forward(x)).toBe(x);
    expect(() => new Dropout(1)).toThrow(/dropout must be a number in \[0, 1\)/u);
  });
});

describe('layer construction', () => {
  it('leaves no tensors behind once a layer is disposed', async () => {
    await initRuntime();
    for (const make of [
      () => new Linear({ inFeatures: 4, outFeatures: 3 }),
      () => new Linear({ inFeatures: 4, outFeatures: 3, fanInFanOut: true, bias: false }),
      () => new LayerNorm({ dim: 4 }),
      () => new RMSNorm({ dim: 4 }),
      () => new Embedding({ numEmbeddings: 5, embeddingDim: 3 }),
    ]) {
      const before = tf.memory().numTensors;
      make().dispose();
      expect(tf.memory().numTensors).toBe(before);
    }
  });
});
