import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { lowRankTrain, LORA_BACKWARD_KERNEL, LORA_FORWARD_KERNEL } from '../src/low-rank-train.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';
import { expectWithinRounding, reference, values, variableOf } from './low-rank-reference.js';

/** The layer's output and its gradients (through a weighted sum whose weights are dy), by lowRankTrain or the composed products. */
function passes(fused: boolean, x: tf.Tensor, a: tf.Tensor, b: tf.Tensor, base: tf.Tensor, dy: tf.Tensor, s: number) {
  const f = (xi: tf.Tensor, ai: tf.Tensor, bi: tf.Tensor, basei: tf.Tensor): tf.Tensor => {
    const y = fused ? lowRankTrain(xi, ai, bi, basei, s) : null;
    if (fused && y === null) throw new Error('lowRankTrain declined');
    const composed = (): tf.Tensor => {
      const x2 = tf.reshape(xi, [-1, ai.shape[1]!]) as tf.Tensor2D;
      return tf.reshape(
        tf.add(tf.reshape(basei, [-1, bi.shape[0]!]), tf.matMul(tf.mul(tf.matMul(x2, ai as tf.Tensor2D, false, true), s), bi as tf.Tensor2D, false, true)),
        basei.shape
      );
    };
    return tf.sum(tf.mul(y ?? composed(), dy));
  };
  const value = tf.tidy(() =>
    fused
      ? lowRankTrain(x, a, b, base, s)!
      : tf.add(
          base,
          tf.reshape(tf.matMul(tf.mul(tf.matMul(tf.reshape(x, [-1, a.shape[1]!]) as tf.Tensor2D, a as tf.Tensor2D, false, true), s), b as tf.Tensor2D, false, true), base.shape)
        )
  );
  const grads = tf.grads(f)([x, a, b, base]);
  return { value, grads };
}

// [x shape, rank, out features]: the small model's c_attn and c_proj; sizes off the 4×8 tile, a
// partial last block of rows, rank 1 and 16 (two panels), fewer than 4 rows.
const SHAPES: [number[], number, number][] = [
  [[8, 128, 256], 8, 768],
  [[4, 128, 256], 8, 256],
  [[3, 47, 37], 5, 19],
  [[301, 20], 1, 13],
  [[2, 70, 24], 16, 33],
  [[3, 9], 4, 10],
];

/**
 * A layer's operands (values seeded from `seed`) and sizes, with the float64 results for scaling
 * `s` and, from the operands' absolute values, the sums of each result's terms' absolute values
 * (how far float32 rounding can move it).
 */
function layerCase(xShape: number[], rank: number, outFeatures: number, seed: number, s: number) {
  const inFeatures = xShape.at(-1)!;
  const rows = xShape.slice(0, -1).reduce((p, q) => p * q, 1);
  const baseShape = [...xShape.slice(0, -1), outFeatures];
  const sizes = [rows * inFeatures, rank * inFeatures, outFeatures * rank, rows * outFeatures, rows * outFeatures];
  const [x, a, b, base, dy] = sizes.map((size, i) => values(size, seed + i)) as [Float32Array, Float32Array, Float32Array, Float32Array, Float32Array];
  const abs = (v: Float32Array): Float32Array => v.map(Math.abs);
  return {
    inFeatures,
    rows,
    baseShape,
    x,
    a,
    b,
    base,
    dy,
    expected: reference(x, a, b, base, dy, rows, inFeatures, rank, outFeatures, s),
    magnitude: reference(abs(x), abs(a), abs(b), abs(base), abs(dy), rows, inFeatures, rank, outFeatures, s),
  };
}

describe('lowRankTrain: a LoRA layer in one WASM kernel each way', () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('wasm');
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it.each(SHAPES)('matches float64, value and gradients, for x %j, rank %i, %i outputs', async (xShape, rank, outFeatures) => {
    const s = 2.5;
    const { inFeatures, rows, baseShape, x, a, b, base, dy, expected, magnitude } = layerCase(xShape, rank, outFeatures, 1, s);
    await withoutTensorLeaks(() => {
      // x a trainable variable, as a layer's input computed from trainable weights is: the backward kernel computes dx.
      const tensors = [
        variableOf(x, xShape),
        tf.tensor2d(a, [rank, inFeatures]),
        tf.tensor2d(b, [outFeatures, rank]),
        tf.tensor(base, baseShape),
        tf.tensor(dy, baseShape),
      ] as const;
      const spy = spyOnKernels();
      const { value, grads } = passes(true, ...tensors, s);
      spy.stop();
      const names = spy.calls.map((call) => call.kernelName);
      // One kernel each way; no product.
      expect(names.filter((name) => name === LORA_FORWARD_KERNEL)).toHaveLength(2);
      expect(names.filter((name) => name === LORA_BACKWARD_KERNEL)).toHaveLength(1);
      expect(spy.calls.find((call) => call.kernelName === LORA_BACKWARD_KERNEL)!.outputShapes).toEqual([
        [rows, inFeatures],
        [rank, inFeatures],
        [outFeatures, rank],
      ]);
      expect(names.filter((name) => /MatMul/.test(name))).toEqual([]);
      expect(value.shape).toEqual(baseShape);
      const results = [value, ...grads.slice(0, 3)].map((tensor) => tensor.dataSync());
      const outputs = ['y', 'dx', 'dA', 'dB'] as const;
      const exact = [expected.y, expected.dx, expected.da, expected.db];
      const bounds = [magnitude.y, magnitude.dx, magnitude.da, magnitude.db];
      results.forEach((got, i) => expectWithinRounding(got, exact[i]!, bounds[i]!, outputs[i]!));
      expectTensorsClose(grads[3]!, dy, { rtol: 0, atol: 0 });
      tf.dispose([...tensors, value, ...grads]);
    });
  });

  it('agrees with the composed products on the plain-JS backend (each within the two forms’ rounding)', async () => {
    const [xShape, rank, outFeatures] = SHAPES[2]!;
    const { inFeatures, baseShape, x, a, b, base, dy, magnitude } = layerCase(xShape, rank, outFeatures, 6, 0.75);
    const inputs = [x, a, b, base, dy] as const;
    const run = (fused: boolean): Float32Array[] =>
      tf.tidy(() => {
        const tensors = [
          tf.tensor(inputs[0], xShape),
          tf.tensor2d(inputs[1], [rank, inFeatures]),
          tf.tensor2d(inputs[2], [outFeatures, rank]),
          tf.tensor(inputs[3], baseShape),
          tf.tensor(inputs[4], baseShape),
        ] as const;
        const { value, grads } = passes(fused, ...tensors, 0.75);
        return [value, ...grads].map((tensor) => tensor.dataSync() as Float32Array);
      });
    const ours = run(true);
    await tf.setBackend('cpu');
    try {
      const stock = run(false);
      const bounds = [magnitude.y, magnitude.dx, magnitude.da, magnitude.db, magnitude.y];
      ours.forEach((got, i) => expectWithinRounding(got, stock[i]!, bounds[i]!, ['y', 'dx', 'dA', 'dB', 'dbase'][i]!, 2 ** -17));
    } finally {
      await tf.setBackend('wasm');
    }
  });

  it('leaves dx out of the backward kernel when x depends on no trainable variable, and composes it when asked for anyway', async () => {
    const [xShape, rank, outFeatures] = SHAPES[2]!;
    const { inFeatures, baseShape, x, a, b, base, dy, expected, magnitude } = layerCase(xShape, rank, outFeatures, 11, 1.25);
    await withoutTensorLeaks(() => {
      const aVariable = variableOf(a, [rank, inFeatures]);
      const bVariable = variableOf(b, [outFeatures, rank]);
      // x computed from a frozen weight only (as the first adapted layer's input is).
      const frozen = variableOf(x, xShape, false);
      const [upstream, baseTensor] = [tf.tensor(dy, baseShape), tf.tensor(base, baseShape)];
      const loss = (): tf.Scalar => tf.sum(tf.mul(lowRankTrain(tf.mul(frozen, 1), aVariable, bVariable, baseTensor, 1.25)!, upstream));
      const spy = spyOnKernels();
      const { value, grads } = tf.variableGrads(loss);
      spy.stop();
      const backward = spy.calls.filter((call) => call.kernelName === LORA_BACKWARD_KERNEL);
      expect(backward.map((call) => call.outputShapes)).toEqual([
        [
          [rank, inFeatures],
          [outFeatures, rank],
        ],
      ]);
      expect(Object.keys(grads).sort()).toEqual([aVariable.name, bVariable.name].sort());
      expectWithinRounding(grads[aVariable.name]!.dataSync(), expected.da, magnitude.da, 'dA');
      expectWithinRounding(grads[bVariable.name]!.dataSync(), expected.db, magnitude.db, 'dB');
      // Gradients with respect to x itself still come, composed of products.
      const input = tf.tensor(x, xShape);
      const [dx] = tf.grads((input: tf.Tensor) => tf.sum(tf.mul(lowRankTrain(input, aVariable, bVariable, baseTensor, 1.25)!, upstream)))([input]);
      expectWithinRounding(dx!.dataSync(), expected.dx, magnitude.dx, 'dx');
      tf.dispose([aVariable, bVariable, frozen, upstream, baseTensor, input, value, dx!, ...Object.values(grads)]);
    });
  });

  it('declines where the backend has no fused passes (the plain-JS backend), so the layer composes the products', async () => {
    await tf.setBackend('cpu');
    try {
      const operands = [tf.ones([4, 3]), tf.ones([2, 3]), tf.ones([5, 2]), tf.zeros([4, 5])] as const;
      expect(lowRankTrain(...operands, 1)).toBeNull();
      tf.dispose([...operands]);
    } finally {
      await tf.setBackend('wasm');
    }
  });
});
