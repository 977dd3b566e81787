import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { fastWasmMatMulKernels, initRuntime, restoreWasmMatMul, useFastWasmMatMul } from '../src/index.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';
import { THIN_DIMENSION, transposeCost } from '../src/wasm-matmul.js';

/**
 * Run `compute` on tfjs's plain JS backend (the independent reference: seeded inputs are the same
 * on every backend) and on WASM with the fast paths; compare.
 */
async function expectSameAsCpu(compute: () => tf.Tensor | tf.Tensor[], tolerance = { atol: 1e-4, rtol: 1e-4 }): Promise<void> {
  await tf.setBackend('cpu');
  const expected = tf.tidy(() => [compute()].flat().map((t) => t.arraySync()));
  await tf.setBackend('wasm');
  const actual = tf.tidy(() => [compute()].flat().map((t) => ({ shape: t.shape, values: t.dataSync() })));
  expect(actual).toHaveLength(expected.length);
  actual.forEach((result, i) => {
    const reference = tf.tidy(() => tf.tensor(expected[i] as number[]).dataSync());
    expect(result.values.length).toBe(reference.length);
    expectTensorsClose(result.values, reference, tolerance);
  });
}

const random = (shape: number[], seed: number): tf.Tensor => tf.randomNormal(shape, 0, 1, 'float32', seed);

beforeAll(async () => {
  // initRuntime() routes the wasm backend's matMuls through the fast paths.
  await initRuntime({ backend: 'wasm' });
});

describe('useFastWasmMatMul', () => {
  it('is applied by initRuntime() and patches BatchMatMul and _FusedMatMul once', () => {
    expect(fastWasmMatMulKernels()).toEqual(['BatchMatMul', '_FusedMatMul']);
    expect(useFastWasmMatMul()).toEqual([]);
  });

  it.each([
    ['x·W', [40, 24], [24, 16], false, false],
    ['x·Wᵀ (PyTorch-layout Linear)', [40, 24], [16, 24], false, true],
    ['xᵀ·dy (weight gradient)', [40, 24], [40, 16], true, false],
    ['xᵀ·dy with a thin dy (LoRA B gradient: transposes the result instead)', [64, 48], [64, 4], true, false],
    ['aᵀ·bᵀ', [24, 40], [16, 24], true, true],
    ['a stack times one matrix', [3, 5, 24], [24, 16], false, false],
    ['a stack times one transposed matrix', [2, 3, 5, 24], [16, 24], false, true],
    ['a transposed stack times one matrix', [3, 24, 5], [24, 16], true, false],
    ['attention scores q·kᵀ', [4, 64, 64], [4, 64, 64], false, true],
    ['attention output p·v over [batch, heads]', [2, 2, 64, 64], [2, 2, 64, 48], false, false],
    ['one matrix times a stack', [64, 64], [3, 64, 64], false, false],
    ['a small stack (left to tfjs)', [4, 8, 8], [4, 8, 8], false, true],
  ] as const)('computes %s', async (_name, aShape, bShape, transposeA, transposeB) => {
    await withoutTensorLeaks(() => expectSameAsCpu(() => tf.matMul(random([...aShape], 1), random([...bShape], 2), transposeA, transposeB)));
  });

  it('computes fused matMuls with bias and activation right, where tfjs-backend-wasm 4.22 gets the bias wrong', async () => {
    await withoutTensorLeaks(async () => {
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([40, 24], 3), b: random([16, 24], 4), transposeB: true, bias: random([16], 5), activation: 'relu' }));
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([3, 5, 100], 3), b: random([100, 16], 4), bias: random([16], 5) }));
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([3, 5, 24], 3), b: random([24, 16], 4), bias: random([16], 5) }));
      await expectSameAsCpu(() =>
        tf.fused.matMul({ a: random([24, 40], 6), b: random([24, 16], 7), transposeA: true, activation: 'prelu', preluActivationWeights: random([16], 8) }),
      );
      // Thin outputs with a bias: the bias belongs to C's columns, so C is not computed transposed.
      await expectSameAsCpu(() =>
        tf.fused.matMul({ a: random([64, 48], 6), b: random([64, 4], 7), transposeA: true, bias: random([4], 8), activation: 'relu' }),
      );
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([64, 48], 6), b: random([64, 4], 7), transposeA: true, activation: 'sigmoid' }));
      // A bias added by core's kernel as it stores: partial panels (n = 13, 20) and a last partial
      // tile of rows, a transposed weight, fewer than 4 rows (decoding's streamed weight).
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([7, 24], 3), b: random([24, 13], 4), bias: random([13], 5) }));
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([7, 24], 3), b: random([20, 24], 4), transposeB: true, bias: random([20], 5) }));
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([2, 40], 3), b: random([40, 20], 4), bias: random([20], 5) }));
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([1, 300], 3), b: random([300, 1030], 4), bias: random([1030], 5) }));
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([70, 300], 3), b: random([1030, 300], 4), transposeB: true, bias: random([1, 1030], 5) }));
      // A bias of another size than n: broadcast by an unfused Add.
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([40, 24], 3), b: random([24, 16], 4), bias: tf.tensor1d([0.5]) }));
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([40, 24], 3), b: random([16, 24], 4), transposeB: true, bias: tf.tensor1d([0.5]), activation: 'relu6' }));
      // Stacked products too small for one XNNPACK call each: unfused as well.
      await expectSameAsCpu(() => tf.fused.matMul({ a: random([4, 8, 60], 3), b: random([4, 60, 8], 4), bias: random([8], 5), activation: 'elu' }));
    });
  });

  it('gives the same gradients through every transposed form', async () => {
    await withoutTensorLeaks(async () => {
      await expectSameAsCpu(() => {
        const x = random([2, 8, 24], 9);
        const w = random([16, 24], 10);
        const b = random([16], 11);
        const [dx, dw, db] = tf.grads((xi: tf.Tensor, wi: tf.Tensor, bi: tf.Tensor) =>
          tf.sum(tf.square(tf.fused.matMul({ a: tf.reshape(xi, [16, 24]), b: wi, transposeB: true, bias: bi }))),
        )([x, w, b]);
        const [dq, dk] = tf.grads((q: tf.Tensor, k: tf.Tensor) => tf.sum(tf.square(tf.matMul(q, k, false, true))))([random([2, 64, 64], 12), random([2, 64, 64], 13)]);
        return [dx!, dw!, db!, dq!, dk!];
      }, { atol: 1e-3, rtol: 1e-4 });
    });
  });

  it('restores tfjs\'s kernels', () => {
    expect(restoreWasmMatMul()).toEqual(['BatchMatMul', '_FusedMatMul']);
    expect(fastWasmMatMulKernels()).toEqual([]);
    useFastWasmMatMul();
  });
});

describe('transposeCost', () => {
  it('transposes the result instead of a large operand when that moves fewer values', () => {
    expect(transposeCost({ transposeA: true, transposeB: false, m: 768, k: 1024, n: 8 })).toEqual({ direct: 786_432, viaTranspose: 14_336, swapped: true });
    expect(transposeCost({ transposeA: false, transposeB: true, m: 1024, k: 256, n: 768 }).swapped).toBe(false);
  });

  it('calls a product thin (SIMD kernel, no XNNPACK) at 16 or fewer rows, columns or inner values', () => {
    expect(THIN_DIMENSION).toBe(16);
  });
});
