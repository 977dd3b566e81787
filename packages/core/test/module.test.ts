import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { Dropout, Embedding, initRuntime, LayerNorm, Linear, LoraError, Module, ModuleError, ModuleList, RMSNorm } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { expectTensorsClose, runSuiteOnBackend } from '../src/testing.js';

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

  it.each(['wasm', 'cpu'])('differentiates LayerNorm as its definition in float64 (central differences) on %s', async (backend) => {
    await initRuntime();
    await tf.setBackend(backend);
    const [rows, dim] = [6, 5];
    const xs = Array.from({ length: rows * dim }, (_, i) => Math.sin(i * 1.7) * 3 + (i % dim));
    const ws = Array.from({ length: dim }, (_, i) => 0.5 + i / 4);
    const bs = Array.from({ length: dim }, (_, i) => i / 10 - 0.2);
    const cs = Array.from({ length: rows * dim }, (_, i) => Math.cos(i * 0.9));
    // loss = Σ c·LayerNorm(x; w, b) in float64.
    const loss = (x: number[], w: number[], b: number[]): number => {
      let total = 0;
      for (let r = 0; r < rows; r++) {
        const row = x.slice(r * dim, (r + 1) * dim);
        const mean = row.reduce((a, v) => a + v, 0) / dim;
        const variance = row.reduce((a, v) => a + (v - mean) ** 2, 0) / dim;
        row.forEach((v, j) => (total += cs[r * dim + j]! * (((v - mean) / Math.sqrt(variance + 1e-5)) * w[j]! + b[j]!)));
      }
      return total;
    };
    const h = 1e-6;
    const numeric = (values: number[], at: (changed: number[]) => number): number[] =>
      values.map((_, i) => {
        const up = [...values];
        const down = [...values];
        up[i]! += h;
        down[i]! -= h;
        return (at(up) - at(down)) / (2 * h);
      });
    const layer = new LayerNorm({ dim, eps: 1e-5 });
    tf.tidy(() => {
      layer.weight.assign(tf.tensor1d(ws));
      layer.bias.assign(tf.tensor1d(bs));
    });
    const x = tf.tensor3d(xs, [2, 3, dim]);
    const c = tf.tensor3d(cs, [2, 3, dim]);
    const trainableSpy = spyOnKernels();
    const { grads } = tf.variableGrads(() => tf.sum(tf.mul(layer.forward(x), c)) as tf.Scalar, [layer.weight, layer.bias]);
    trainableSpy.stop();
    const dx = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(layer.forward(input), c)))(x);
    expectTensorsClose(dx, numeric(xs, (changed) => loss(changed, ws, bs)), { atol: 1e-4, rtol: 1e-4 });
    expectTensorsClose(grads[layer.weight.name]!, numeric(ws, (changed) => loss(xs, changed, bs)), { atol: 1e-4, rtol: 1e-4 });
    expectTensorsClose(grads[layer.bias.name]!, numeric(bs, (changed) => loss(xs, ws, changed)), { atol: 1e-4, rtol: 1e-4 });
    // Frozen (LoRA training): the same input gradient, and no reduction over the rows for the
    // weight and bias gradients nobody asked for.
    layer.weight.trainable = false;
    layer.bias.trainable = false;
    const spy = spyOnKernels();
    const frozenDx = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(layer.forward(input), c)))(x);
    spy.stop();
    expectTensorsClose(frozenDx, numeric(xs, (changed) => loss(changed, ws, bs)), { atol: 1e-4, rtol: 1e-4 });
    // Σ over the rows: a Sum to rank 1, or the fused weight gradient on WASM.
    const rowReductions = (calls: typeof spy.calls): number =>
      calls.filter((call) => call.kernelName === 'LoraLayerNormWeightGrad' || (call.kernelName === 'Sum' && call.inputShapes['x']!.length === 3 && call.outputShapes[0]!.length === 1)).length;
    expect(rowReductions(trainableSpy.calls)).toBe(2);
    expect(rowReductions(spy.calls)).toBe(0);
    tf.dispose([x, c, dx, frozenDx, ...Object.values(grads)]);
    layer.dispose();
    await tf.setBackend('wasm');
  });

  it.each(['wasm', 'cpu'])('computes a frozen Linear with the bias inside the product and the same value and input gradient on %s', async (backend) => {
    await initRuntime();
    await tf.setBackend(backend);
    for (const fanInFanOut of [false, true]) {
      const layer = new Linear({ inFeatures: 24, outFeatures: 20, fanInFanOut, seed: 3 });
      const x = tf.randomNormal([2, 5, 24], 0, 1, 'float32', 4);
      const c = tf.randomNormal([2, 5, 20], 0, 1, 'float32', 5);
      const valueAndGradient = (): [tf.Tensor, tf.Tensor] => [layer.forward(x), tf.grad((input: tf.Tensor) => tf.sum(tf.mul(layer.forward(input), c)))(x)];
      const inferenceSpy = spyOnKernels();
      const [trainableValue, trainableGradient] = valueAndGradient();
      inferenceSpy.stop();
      // Trainable: the value outside the tape and the gradient's forward under it both have the
      // bias inside the product.
      const inferenceKernels = inferenceSpy.calls.filter((call) => call.depth === 0).map((call) => call.kernelName);
      expect(inferenceKernels.filter((name) => name === '_FusedMatMul')).toHaveLength(2);
      expect(inferenceKernels).not.toContain('Add');
      layer.weight.trainable = false;
      layer.bias!.trainable = false;
      const spy = spyOnKernels();
      const [frozenValue, frozenGradient] = valueAndGradient();
      spy.stop();
      expectTensorsClose(frozenValue, trainableValue, { atol: 1e-5, rtol: 1e-5 });
      expectTensorsClose(frozenGradient, trainableGradient, { atol: 1e-5, rtol: 1e-5 });
      const names = spy.calls.filter((call) => call.depth === 0).map((call) => call.kernelName);
      expect(names).toContain('_FusedMatMul');
      expect(names).not.toContain('Add');
      tf.dispose([x, c, trainableValue, trainableGradient, frozenValue, frozenGradient]);
      layer.dispose();
    }
    await tf.setBackend('wasm');
  });

  it.each(['wasm', 'cpu'])('trains a Linear’s weight and bias with the bias inside the product, its gradients equal to float64’s on %s', async (backend) => {
    await initRuntime();
    await tf.setBackend(backend);
    const [rows, inFeatures, outFeatures] = [7, 24, 20];
    const xs = Array.from({ length: rows * inFeatures }, (_, i) => Math.sin(i * 0.37));
    const cs = Array.from({ length: rows * outFeatures }, (_, i) => Math.cos(i * 0.61));
    for (const fanInFanOut of [false, true]) {
      const layer = new Linear({ inFeatures, outFeatures, fanInFanOut, seed: 5 });
      const ws = Array.from(layer.weight.dataSync());
      const bs = Array.from(layer.bias!.dataSync());
      // W[o][i] in either layout; loss = Σ c·(x·Wᵀ + b), so dy = c and, in float64:
      // y = x·Wᵀ + b, dx = c·W, dW[o][i] = Σ_rows c[r][o]·x[r][i], db = Σ_rows c.
      const weightAt = (o: number, i: number): number => ws[fanInFanOut ? i * outFeatures + o : o * inFeatures + i]!;
      const y: number[] = [];
      const dx: number[] = [];
      for (let r = 0; r < rows; r++) {
        for (let o = 0; o < outFeatures; o++) y.push(bs[o]! + xs.slice(r * inFeatures, (r + 1) * inFeatures).reduce((sum, v, i) => sum + v * weightAt(o, i), 0));
        for (let i = 0; i < inFeatures; i++) dx.push(cs.slice(r * outFeatures, (r + 1) * outFeatures).reduce((sum, c, o) => sum + c * weightAt(o, i), 0));
      }
      const dwAt = (o: number, i: number): number => Array.from({ length: rows }, (_, r) => cs[r * outFeatures + o]! * xs[r * inFeatures + i]!).reduce((a, b) => a + b, 0);
      const dw = fanInFanOut
        ? Array.from({ length: inFeatures * outFeatures }, (_, k) => dwAt(k % outFeatures, Math.floor(k / outFeatures)))
        : Array.from({ length: inFeatures * outFeatures }, (_, k) => dwAt(Math.floor(k / inFeatures), k % inFeatures));
      const db = Array.from({ length: outFeatures }, (_, o) => Array.from({ length: rows }, (_, r) => cs[r * outFeatures + o]!).reduce((a, b) => a + b, 0));
      const x = tf.variable(tf.tensor2d(xs, [rows, inFeatures]), true, `linear-input-${backend}-${fanInFanOut}`);
      const c = tf.tensor2d(cs, [rows, outFeatures]);
      const before = tf.memory().numTensors;
      const spy = spyOnKernels();
      const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(layer.forward(x), c)) as tf.Scalar, [x, layer.weight, layer.bias!]);
      spy.stop();
      const forward = tf.tidy(() => layer.forward(x));
      tf.tidy(() => {
        expectTensorsClose(forward, tf.tensor2d(y, [rows, outFeatures]), { atol: 1e-5, rtol: 1e-5 });
        expectTensorsClose(grads[x.name]!, tf.tensor2d(dx, [rows, inFeatures]), { atol: 1e-5, rtol: 1e-5 });
        expectTensorsClose(grads[layer.weight.name]!, tf.tensor(dw, layer.weight.shape), { atol: 1e-5, rtol: 1e-5 });
        expectTensorsClose(grads[layer.bias!.name]!, tf.tensor1d(db), { atol: 1e-5, rtol: 1e-5 });
      });
      // One product with its bias forward, no Add; backward the two products and one row sum (the
      // other Sum is the loss's).
      const calls = spy.calls.filter((call) => call.depth === 0);
      const names = calls.map((call) => call.kernelName);
      expect(names.filter((name) => name === '_FusedMatMul')).toHaveLength(1);
      expect(names).not.toContain('Add');
      expect(names.filter((name) => name === 'BatchMatMul')).toHaveLength(2);
      expect(calls.filter((call) => call.kernelName === 'Sum' && call.outputShapes[0]!.length === 1)).toHaveLength(1);
      tf.dispose([value, ...Object.values(grads), forward]);
      expect(tf.memory().numTensors).toBe(before);
      tf.dispose([x, c]);
      layer.dispose();
    }
    await tf.setBackend('wasm');
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

  it('refuses a forward pass after dispose() with a LoraError naming the layer, on a layer and on a model holding it', () => {
    const cases: [string, Module & { forward(x: tf.Tensor): tf.Tensor }, () => tf.Tensor][] = [
      ['Linear', new Linear({ inFeatures: 4, outFeatures: 3 }), () => tf.ones([2, 4])],
      ['LayerNorm', new LayerNorm({ dim: 4 }), () => tf.ones([2, 4])],
      ['RMSNorm', new RMSNorm({ dim: 4 }), () => tf.ones([2, 4])],
      ['Embedding', new Embedding({ numEmbeddings: 5, embeddingDim: 3 }), () => tf.tensor1d([0, 4], 'int32')],
    ];
    for (const [name, layer, input] of cases) {
      const x = input();
      tf.dispose(layer.forward(x));
      expect(layer.isDisposed).toBe(false);
      layer.dispose();
      expect(layer.isDisposed).toBe(true);
      const before = tf.memory().numTensors;
      expect(() => layer.forward(x)).toThrow(
        new LoraError(`[@lora/core] ${name}: this layer was disposed (with its model or AdapterModel), its weights freed. Load or create the model again, and call dispose() only when done with it.`),
      );
      expect(tf.memory().numTensors).toBe(before);
      x.dispose();
    }
    // Disposing a model marks every layer in it, so its first layer refuses (a tied head included).
    const model = new Tied();
    model.dispose();
    expect(model.namedModules().every(([, module]) => module.isDisposed)).toBe(true);
    const ids = tf.tensor1d([1, 2], 'int32');
    expect(() => model.wte.forward(ids)).toThrow(/^\[@lora\/core\] Embedding: this layer was disposed/u);
    ids.dispose();
  });

  it('refuses layer sizes that are not positive integers with a ConfigError naming the option, before making any tensor', () => {
    const before = tf.memory().numTensors;
    expect(() => new Linear({ inFeatures: 0, outFeatures: 3 })).toThrow('[@lora/core] Invalid config: inFeatures must be a positive integer, got 0. Linear takes the sizes of its input and output features.');
    expect(() => new Linear({ inFeatures: 4, outFeatures: 2.5 })).toThrow(/outFeatures must be a positive integer, got 2\.5/u);
    expect(() => new Embedding({ numEmbeddings: -1, embeddingDim: 3 })).toThrow(/numEmbeddings must be a positive integer, got -1\. Embedding takes the number of rows/u);
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe.each(['wasm', 'cpu'])('Embedding on %s', (backend) => {
  runSuiteOnBackend(backend);

  it('says which token id is out of range and how large the table is, leaking nothing', () => {
    const embedding = new Embedding({ numEmbeddings: 5, embeddingDim: 3, seed: 1 });
    const before = tf.memory().numTensors;
    for (const id of [5, -1]) {
      const ids = tf.tensor2d([[1, id]], undefined, 'int32');
      expect(() => embedding.forward(ids)).toThrow(LoraError);
      expect(() => embedding.forward(ids)).toThrow(
        `[@lora/core] Embedding: token id ${id} is out of range: the table has 5 rows (ids 0 to 4). Check that the tokenizer belongs to the model (its vocab_size).`,
      );
      ids.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
    embedding.dispose();
  });
});
