import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdapterLayer } from '../src/adapter-layer.js';
import { initRuntime } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { Linear } from '../src/linear.js';
import { LoraAdapter } from '../src/lora-layer.js';
import {
  LORA_BACKWARD_KERNEL,
  LORA_FORWARD_KERNEL,
  LORA_LINEAR_BACKWARD_KERNEL,
  LORA_LINEAR_DROPOUT_FORWARD_KERNEL,
  LORA_LINEAR_FORWARD_KERNEL,
  lowRankLinearTrain,
} from '../src/low-rank-train.js';
import { withSeededRandom } from '../src/random-scope.js';
import { withoutTensorLeaks } from '../src/testing.js';
import { expectWithinRounding, linearReference, values, variableOf } from './low-rank-reference.js';

type Layout = 'in-out' | 'out-in';

/** A layer's operands (values seeded from `seed`) and the float64 results and magnitudes (see low-rank-reference). */
function linearCase(xShape: number[], rank: number, outFeatures: number, layout: Layout, withBias: boolean, seed: number, s: number) {
  const inFeatures = xShape.at(-1)!;
  const rows = xShape.slice(0, -1).reduce((p, q) => p * q, 1);
  const yShape = [...xShape.slice(0, -1), outFeatures];
  const sizes = [rows * inFeatures, inFeatures * outFeatures, outFeatures, rank * inFeatures, outFeatures * rank, rows * outFeatures];
  const [x, w, biasValues, a, b, dy] = sizes.map((size, i) => values(size, seed + i)) as [Float32Array, Float32Array, Float32Array, Float32Array, Float32Array, Float32Array];
  const bias = withBias ? biasValues : null;
  const inOut = layout === 'in-out';
  const abs = (v: Float32Array): Float32Array => v.map(Math.abs);
  return {
    inFeatures,
    rows,
    yShape,
    weightShape: inOut ? [inFeatures, outFeatures] : [outFeatures, inFeatures],
    inOut,
    x,
    w,
    bias,
    a,
    b,
    dy,
    expected: linearReference(x, null, w, inOut, bias, a, b, dy, rows, inFeatures, rank, outFeatures, s),
    magnitude: linearReference(abs(x), null, abs(w), inOut, bias && abs(bias), abs(a), abs(b), abs(dy), rows, inFeatures, rank, outFeatures, s),
  };
}

/**
 * A case's tensors as LoRA training holds them: x, A and B trainable variables (x's gradient is then
 * computed), the base weight and bias frozen ones, and the upstream gradient.
 */
function trainingTensors(c: ReturnType<typeof linearCase>, xShape: number[], rank: number, outFeatures: number) {
  return {
    x: variableOf(c.x, xShape),
    a: variableOf(c.a, [rank, c.inFeatures]),
    b: variableOf(c.b, [outFeatures, rank]),
    w: variableOf(c.w, c.weightShape, false),
    bias: c.bias === null ? null : variableOf(c.bias, [outFeatures], false),
    upstream: tf.tensor(c.dy, c.yShape),
  };
}

// [x shape, rank, out features, weight layout, bias]: the small model's c_attn and c_proj (GPT-2's
// Conv1D stores [in, out]); sizes off the 4×8 tile, a partial last block of rows, rank 1 and 16,
// fewer than 4 rows (which read an [in, out] weight in place), both layouts, with and without bias.
const SHAPES: [number[], number, number, Layout, boolean][] = [
  [[8, 128, 256], 8, 768, 'in-out', true],
  [[4, 128, 256], 8, 256, 'out-in', true],
  [[3, 47, 37], 5, 19, 'in-out', false],
  [[301, 20], 1, 13, 'out-in', true],
  [[2, 70, 24], 16, 33, 'out-in', false],
  [[3, 9], 4, 10, 'in-out', true],
  [[2, 9], 4, 10, 'out-in', true],
];

describe('lowRankLinearTrain: a LoRA layer and its base layer in one WASM kernel each way', () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('wasm');
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it.each(SHAPES)('matches float64, value and gradients, for x %j, rank %i, %i outputs, a %s weight (bias %s)', async (xShape, rank, outFeatures, layout, withBias) => {
    const s = 2.5;
    const c = linearCase(xShape, rank, outFeatures, layout, withBias, 1, s);
    await withoutTensorLeaks(() => {
      const { x, a, b, w, bias, upstream } = trainingTensors(c, xShape, rank, outFeatures);
      const spy = spyOnKernels();
      const value = lowRankLinearTrain(x, { weight: w, bias, fanInFanOut: c.inOut }, a, b, s)!;
      const { value: loss, grads } = tf.variableGrads(() => tf.sum(tf.mul(lowRankLinearTrain(x, { weight: w, bias, fanInFanOut: c.inOut }, a, b, s)!, upstream)), [x, a, b]);
      spy.stop();
      const names = spy.calls.map((call) => call.kernelName);
      // One kernel each way for the whole layer: no product, no add, no separate LoRA pass.
      expect(names.filter((name) => name === LORA_LINEAR_FORWARD_KERNEL)).toHaveLength(2);
      expect(names.filter((name) => name === LORA_LINEAR_BACKWARD_KERNEL)).toHaveLength(1);
      expect(names.filter((name) => /MatMul|^Add|LowRank/.test(name))).toEqual([]);
      expect(value.shape).toEqual(c.yShape);
      const results = [value, grads[x.name]!, grads[a.name]!, grads[b.name]!].map((tensor) => tensor.dataSync());
      const exact = [c.expected.y, c.expected.dx, c.expected.da, c.expected.db];
      const bounds = [c.magnitude.y, c.magnitude.dx, c.magnitude.da, c.magnitude.db];
      results.forEach((got, i) => expectWithinRounding(got, exact[i]!, bounds[i]!, ['y', 'dx', 'dA', 'dB'][i]!));
      tf.dispose([x, a, b, w, upstream, value, loss, ...(bias === null ? [] : [bias]), ...Object.values(grads)]);
    });
  });

  it.each(SHAPES.slice(1, 5))(
    'takes the adapter’s own input (the base’s after dropout), x %j, rank %i, %i outputs, a %s weight (bias %s)',
    async (xShape, rank, outFeatures, layout, withBias) => {
      const s = 0.75;
      const c = linearCase(xShape, rank, outFeatures, layout, withBias, 3, s);
      // The adapter's input: x with some values zeroed and the rest scaled, as dropout leaves it.
      const xa = c.x.map((value, i) => (i % 7 === 3 ? 0 : value / 0.9));
      const expected = linearReference(c.x, xa, c.w, c.inOut, c.bias, c.a, c.b, c.dy, c.rows, c.inFeatures, rank, outFeatures, s);
      const abs = (v: Float32Array): Float32Array => v.map(Math.abs);
      const magnitude = linearReference(abs(c.x), abs(xa), abs(c.w), c.inOut, c.bias && abs(c.bias), abs(c.a), abs(c.b), abs(c.dy), c.rows, c.inFeatures, rank, outFeatures, s);
      await withoutTensorLeaks(() => {
        const { x, a, b, w, bias, upstream } = trainingTensors(c, xShape, rank, outFeatures);
        const adapterInput = variableOf(xa, xShape);
        const spy = spyOnKernels();
        const { value, grads } = tf.variableGrads(
          () => tf.sum(tf.mul(lowRankLinearTrain(x, { weight: w, bias, fanInFanOut: c.inOut }, a, b, s, () => adapterInput)!, upstream)),
          [x, adapterInput, a, b]
        );
        spy.stop();
        const names = spy.calls.map((call) => call.kernelName);
        expect(names.filter((name) => name === LORA_LINEAR_DROPOUT_FORWARD_KERNEL)).toHaveLength(1);
        expect(names.filter((name) => name === LORA_LINEAR_BACKWARD_KERNEL)).toHaveLength(1);
        expect(spy.calls.find((call) => call.kernelName === LORA_LINEAR_BACKWARD_KERNEL)!.outputShapes).toHaveLength(4);
        expect(names.filter((name) => /MatMul|^Add|LowRank/.test(name))).toEqual([]);
        const results = [grads[x.name]!, grads[adapterInput.name]!, grads[a.name]!, grads[b.name]!].map((tensor) => tensor.dataSync());
        const exact = [expected.dx, expected.dxa, expected.da, expected.db];
        const bounds = [magnitude.dx, magnitude.dxa, magnitude.da, magnitude.db];
        results.forEach((got, i) => expectWithinRounding(got, exact[i]!, bounds[i]!, ['dx', 'dxa', 'dA', 'dB'][i]!));
        const y = lowRankLinearTrain(x, { weight: w, bias, fanInFanOut: c.inOut }, a, b, s, () => adapterInput)!;
        expectWithinRounding(y.dataSync(), expected.y, magnitude.y, 'y');
        tf.dispose([x, adapterInput, a, b, w, upstream, value, y, ...(bias === null ? [] : [bias]), ...Object.values(grads)]);
      });
    }
  );

  it('gives a trainable base weight and bias their gradients (composed of products), in either layout', async () => {
    for (const layout of ['in-out', 'out-in'] as const) {
      const [xShape, rank, outFeatures] = [[3, 47, 37], 5, 19] as const;
      const c = linearCase([...xShape], rank, outFeatures, layout, true, 7, 0.5);
      await withoutTensorLeaks(() => {
        const x = tf.tensor(c.x, [...xShape]);
        const a = variableOf(c.a, [rank, c.inFeatures]);
        const b = variableOf(c.b, [outFeatures, rank]);
        const w = variableOf(c.w, c.weightShape);
        const bias = variableOf(c.bias!, [outFeatures]);
        const upstream = tf.tensor(c.dy, c.yShape);
        const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(lowRankLinearTrain(x, { weight: w, bias, fanInFanOut: c.inOut }, a, b, 0.5)!, upstream)), [a, b, w, bias]);
        expectWithinRounding(grads[w.name]!.dataSync(), c.expected.dw, c.magnitude.dw, `dW (${layout})`);
        expectWithinRounding(grads[bias.name]!.dataSync(), c.expected.dbias, c.magnitude.dbias, `dbias (${layout})`);
        expectWithinRounding(grads[a.name]!.dataSync(), c.expected.da, c.magnitude.da, `dA (${layout})`);
        tf.dispose([x, a, b, w, bias, upstream, value, ...Object.values(grads)]);
      });
    }
  });

  it('leaves dx and the base product out of the backward kernel when x depends on no trainable variable', async () => {
    const [xShape, rank, outFeatures] = [[4, 128, 256], 8, 768] as const;
    const c = linearCase([...xShape], rank, outFeatures, 'in-out', true, 11, 2);
    await withoutTensorLeaks(() => {
      const x = variableOf(c.x, [...xShape], false);
      const a = variableOf(c.a, [rank, c.inFeatures]);
      const b = variableOf(c.b, [outFeatures, rank]);
      const [w, bias] = [tf.tensor(c.w, c.weightShape), tf.tensor(c.bias!, [outFeatures])];
      const upstream = tf.tensor(c.dy, c.yShape);
      const spy = spyOnKernels();
      const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(lowRankLinearTrain(tf.mul(x, 1), { weight: w, bias, fanInFanOut: true }, a, b, 2)!, upstream)), [a, b]);
      spy.stop();
      const backward = spy.calls.filter((call) => call.kernelName === LORA_LINEAR_BACKWARD_KERNEL);
      expect(backward.map((call) => call.outputShapes)).toEqual([
        [
          [rank, c.inFeatures],
          [outFeatures, rank],
        ],
      ]);
      expect(spy.calls.filter((call) => /MatMul/.test(call.kernelName))).toEqual([]);
      expectWithinRounding(grads[a.name]!.dataSync(), c.expected.da, c.magnitude.da, 'dA');
      expectWithinRounding(grads[b.name]!.dataSync(), c.expected.db, c.magnitude.db, 'dB');
      tf.dispose([x, a, b, w, bias, upstream, value, ...Object.values(grads)]);
    });
  });

  it('declines where it cannot take the layer: no fused kernels (plain JS), sizes that do not match, a packed weight too large for its buffers', async () => {
    const operands = (inFeatures: number, outFeatures: number, xFeatures = inFeatures) =>
      [
        tf.ones([4, xFeatures]),
        { weight: tf.ones([inFeatures, outFeatures]), bias: tf.ones([outFeatures]), fanInFanOut: true },
        tf.ones([2, inFeatures]),
        tf.ones([outFeatures, 2]),
      ] as const;
    const fits = (args: ReturnType<typeof operands>): boolean => {
      const y = lowRankLinearTrain(...args, 1);
      y?.dispose();
      tf.dispose([args[0], args[1].weight, args[1].bias, args[2], args[3]]);
      return y !== null;
    };
    expect(fits(operands(12, 7))).toBe(true);
    expect(fits(operands(12, 7, 13))).toBe(false);
    // A [1024, 1024] weight: 4 MiB packed, past the helper's 1 MiB buffer.
    expect(fits(operands(1024, 1024))).toBe(false);
    // The small model's c_attn (a [256, 768] weight, rank 8) takes it, with and without dropout on
    // the adapter's input; a [640, 640] one only without: with dropout its backward blocks (64 rows
    // at least, see wasm-simd-matmul.ts) would not fit beside its packed weight.
    for (const [size, withDropout, fused] of [
      [[256, 768], false, true],
      [[256, 768], true, true],
      [[640, 640], false, true],
      [[640, 640], true, false],
    ] as const) {
      const [x, base] = operands(size[0], size[1]);
      const [a, b] = [tf.ones([8, size[0]]), tf.ones([size[1], 8])];
      const y = lowRankLinearTrain(x, base, a, b, 1, withDropout ? () => tf.mul(x, 2) : undefined);
      expect(y !== null, `${size.join(' → ')}${withDropout ? ', dropout' : ''}`).toBe(fused);
      tf.dispose([x, base.weight, base.bias, a, b, ...(y === null ? [] : [y])]);
    }
    await tf.setBackend('cpu');
    try {
      expect(fits(operands(12, 7))).toBe(false);
    } finally {
      await tf.setBackend('wasm');
    }
  });
});

describe('LoraAdapter.applyWithBase: when a LoRA layer computes its base layer too', () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('wasm');
  });

  /** A Conv1D-like frozen base [24 → 40] with a LoRA adapter of rank 4, as LoRA training holds it. */
  function layer(dropout: number): AdapterLayer {
    const base = new Linear({ inFeatures: 24, outFeatures: 40, fanInFanOut: true, seed: 3 });
    base.setTrainable(false);
    const adapterLayer = new AdapterLayer(base);
    adapterLayer.addAdapter('default', new LoraAdapter({ inFeatures: 24, outFeatures: 40, r: 4, alpha: 8, dropout, init: false, seed: 5 }));
    adapterLayer.setActiveAdapters(['default']);
    adapterLayer.training = true;
    return adapterLayer;
  }

  /** The kernels a training step's forward and backward through `adapterLayer` runs, and its output. */
  function trainingStep(adapterLayer: AdapterLayer, x: tf.Tensor): { names: string[]; output: Float32Array } {
    const spy = spyOnKernels();
    try {
      let output: Float32Array = new Float32Array();
      const { value, grads } = tf.variableGrads(() =>
        tf.tidy(() => {
          const y = adapterLayer.forward(x);
          output = y.dataSync() as Float32Array;
          return tf.sum(tf.square(y));
        })
      );
      tf.dispose([value, ...Object.values(grads)]);
      return { names: spy.calls.map((call) => call.kernelName), output };
    } finally {
      spy.stop();
    }
  }

  /** `fn`'s result with the layer's adapter lacking applyWithBase (the layer runs the base, then apply()). */
  function withoutApplyWithBase<T>(adapterLayer: AdapterLayer, fn: () => T): T {
    const adapter = adapterLayer.adapter('default') as LoraAdapter;
    const applyWithBase = adapter.applyWithBase;
    Object.defineProperty(adapter, 'applyWithBase', { value: undefined, configurable: true });
    try {
      return fn();
    } finally {
      Object.defineProperty(adapter, 'applyWithBase', { value: applyWithBase, configurable: true });
    }
  }

  /** Outputs that differ only in the order of float32 sums of a few dozen terms. */
  function expectWithinFloat32Sums(got: Float32Array, expected: Float32Array): void {
    const worst = Math.max(...got.map((value, i) => Math.abs(value - expected[i]!) / (1 + Math.abs(expected[i]!))));
    expect(worst).toBeLessThan(1e-5);
  }

  it('runs one kernel each way for the one active adapter, equal within rounding to the base layer then apply()', async () => {
    await withoutTensorLeaks(() => {
      const adapterLayer = layer(0);
      const x = tf.tensor(values(6 * 24, 9), [2, 3, 24]);
      const fused = trainingStep(adapterLayer, x);
      expect(fused.names.filter((name) => name === LORA_LINEAR_FORWARD_KERNEL)).toHaveLength(1);
      expect(fused.names.filter((name) => name === LORA_LINEAR_BACKWARD_KERNEL)).toHaveLength(1);
      expect(fused.names.filter((name) => /MatMul|LowRank/.test(name))).toEqual([]);
      // The same layer as base layer then apply(): the adapter's method hidden, the layer declines to nothing.
      const separate = withoutApplyWithBase(adapterLayer, () => trainingStep(adapterLayer, x));
      expect(separate.names).toContain(LORA_FORWARD_KERNEL);
      expect(separate.names).not.toContain(LORA_LINEAR_FORWARD_KERNEL);
      // Both float32 sums of 24 + 4 terms, in other orders.
      expectWithinFloat32Sums(fused.output, separate.output);
      expect(fused.output.some((value) => value !== 0)).toBe(true);
      x.dispose();
      adapterLayer.dispose();
    });
  });

  it('with dropout in training, gives the kernel the adapter’s dropped input: the same output as the base layer then apply() with the same mask', async () => {
    await withoutTensorLeaks(() => {
      const adapterLayer = layer(0.25);
      const x = tf.tensor(values(6 * 24, 9), [2, 3, 24]);
      const fused = withSeededRandom(11, () => trainingStep(adapterLayer, x));
      expect(fused.names.filter((name) => name === LORA_LINEAR_DROPOUT_FORWARD_KERNEL)).toHaveLength(1);
      expect(fused.names.filter((name) => name === LORA_LINEAR_BACKWARD_KERNEL)).toHaveLength(1);
      expect(fused.names.filter((name) => /MatMul|LowRank/.test(name))).toEqual([]);
      const separate = withoutApplyWithBase(adapterLayer, () => withSeededRandom(11, () => trainingStep(adapterLayer, x)));
      expect(separate.names).toContain(LORA_FORWARD_KERNEL);
      expectWithinFloat32Sums(fused.output, separate.output);
      // The mask mattered: without dropout the output is another.
      adapterLayer.training = false;
      const { output: noDropout } = trainingStep(adapterLayer, x);
      expect(Math.max(...noDropout.map((value, i) => Math.abs(value - separate.output[i]!)))).toBeGreaterThan(1e-3);
      x.dispose();
      adapterLayer.dispose();
    });
  });

  it('declines with two active adapters, and for generation’s few rows', async () => {
    await withoutTensorLeaks(() => {
      const x = tf.tensor(values(6 * 24, 9), [2, 3, 24]);
      const twoAdapters = layer(0);
      twoAdapters.addAdapter('other', new LoraAdapter({ inFeatures: 24, outFeatures: 40, r: 2, alpha: 2, init: false, seed: 8 }));
      twoAdapters.setActiveAdapters(['default', 'other']);
      const { names } = trainingStep(twoAdapters, x);
      expect(names.filter((name) => name.startsWith('LoraLinear'))).toEqual([]);
      expect(names).toContain(LORA_FORWARD_KERNEL);
      expect(names).toContain(LORA_BACKWARD_KERNEL);
      twoAdapters.dispose();
      // No tape, 6 rows: the one-call form of token-by-token generation (LoraLowRankAdd).
      const decoding = layer(0);
      decoding.training = false;
      const spy = spyOnKernels();
      tf.tidy(() => {
        decoding.forward(x);
      });
      spy.stop();
      expect(spy.calls.map((call) => call.kernelName)).toContain('LoraLowRankAdd');
      expect(spy.calls.map((call) => call.kernelName).filter((name) => name.startsWith('LoraLinear'))).toEqual([]);
      decoding.dispose();
      x.dispose();
    });
  });
});
