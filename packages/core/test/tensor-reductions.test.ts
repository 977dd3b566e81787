import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { allFinite, ALL_FINITE_KERNEL, sumOfSquares, SUM_OF_SQUARES_KERNEL } from '../src/tensor-reductions.js';
import { withoutTensorLeaks } from '../src/testing.js';

const sizes = [1, 7, 8, 1001, 2048];
const valuesOf = (size: number, seed: number): number[] => Array.from({ length: size }, (_, i) => Math.sin(i * 0.77 + seed) * 3);

/** sumOfSquares and allFinite of tensors of `sizes` on `backend`, with `poison` written at the last value of the last tensor. */
async function reduce(backend: string, poison?: number): Promise<{ kernels: string[]; sum: number; finite: boolean }> {
  await tf.setBackend(backend);
  const tensors = sizes.map((size, i) => {
    const values = valuesOf(size, i);
    if (poison !== undefined && i === sizes.length - 1) values[size - 1] = poison;
    return tf.tensor1d(values);
  });
  const spy = spyOnKernels();
  const sum = sumOfSquares(tensors);
  const finite = allFinite(tensors);
  spy.stop();
  const result = { kernels: spy.calls.map((call) => call.kernelName), sum: sum.dataSync()[0]!, finite };
  tf.dispose([sum, ...tensors]);
  return result;
}

describe('sumOfSquares and allFinite', () => {
  beforeAll(async () => {
    await initRuntime();
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it('give the composite forms on the plain-JS backend, in one kernel each on WASM', async () => {
    const fused = await reduce('wasm');
    const composite = await reduce('cpu');
    expect(fused.kernels).toEqual([SUM_OF_SQUARES_KERNEL, ALL_FINITE_KERNEL]);
    const exact = sizes.reduce((total, size, i) => total + valuesOf(size, i).reduce((sum, v) => sum + Math.fround(v) ** 2, 0), 0);
    expect(Math.abs(fused.sum - exact) / exact).toBeLessThan(1e-6);
    expect(Math.abs(composite.sum - exact) / exact).toBeLessThan(1e-6);
    expect([fused.finite, composite.finite]).toEqual([true, true]);
  });

  it.each([Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY])('see %f in the last value of the last tensor as the composite forms do', async (poison) => {
    const fused = await reduce('wasm', poison);
    const composite = await reduce('cpu', poison);
    expect(fused.finite).toBe(false);
    expect(composite.finite).toBe(false);
    expect(Number.isFinite(fused.sum)).toBe(false);
    expect(Number.isNaN(fused.sum)).toBe(Number.isNaN(composite.sum));
  });

  it('leave no tensors behind', async () => {
    await withoutTensorLeaks(async () => {
      await reduce('wasm', Number.NaN);
      await tf.setBackend('wasm');
    });
  });
});
