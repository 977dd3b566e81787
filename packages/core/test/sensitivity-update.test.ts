import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime, restoreWasmKernels, useFastWasmKernels } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { sensitivityUpdate, SENSITIVITY_UPDATE_KERNEL } from '../src/sensitivity-update.js';
import { withoutTensorLeaks } from '../src/testing.js';

const values = (size: number, seed: number): number[] => Array.from({ length: size }, (_, i) => Math.sin(i * 1.3 + seed) * (1 + (i % 7)));

/** Three updates in a row (state carried over, from zeros) of a parameter of `size` values; returns the final sensitivity and uncertainty. */
function threeUpdates(size: number, fused: boolean): { kernels: string[]; results: Float32Array[] } {
  if (!fused) restoreWasmKernels('wasm');
  try {
    let sensitivity: tf.Tensor = tf.zeros([size]);
    let uncertainty: tf.Tensor = tf.zeros([size]);
    const spy = spyOnKernels();
    for (let step = 1; step <= 3; step++) {
      const param = tf.tensor1d(values(size, step));
      const gradient = tf.tensor1d(values(size, 10 + step));
      const next = sensitivityUpdate({ param, gradient, sensitivity, uncertainty }, { beta1: 0.85, beta2: 0.85 });
      tf.dispose([param, gradient, sensitivity, uncertainty]);
      ({ sensitivity, uncertainty } = next);
    }
    spy.stop();
    const results = [sensitivity, uncertainty].map((tensor) => tensor.dataSync() as Float32Array);
    tf.dispose([sensitivity, uncertainty]);
    return { kernels: spy.calls.map((call) => call.kernelName), results };
  } finally {
    useFastWasmKernels('wasm');
  }
}

/** The same three updates in float64, each operation rounded to float32 as tfjs's kernels round it. */
function threeUpdatesByDefinition(size: number): number[][] {
  const f = Math.fround;
  let s = new Array<number>(size).fill(0);
  let u = new Array<number>(size).fill(0);
  for (let step = 1; step <= 3; step++) {
    const p = values(size, step).map(f);
    const g = values(size, 10 + step).map(f);
    const importance = p.map((value, i) => Math.abs(f(value * g[i]!)));
    const smoothed = s.map((value, i) => f(f(value * f(0.85)) + f(importance[i]! * f(1 - 0.85))));
    u = u.map((value, i) => f(f(value * f(0.85)) + f(Math.abs(f(importance[i]! - smoothed[i]!)) * f(1 - 0.85))));
    s = smoothed;
  }
  return [s, u];
}

describe('sensitivityUpdate: the fused WASM kernel', () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('wasm');
  });
  afterAll(() => {
    useFastWasmKernels('wasm');
  });

  it.each([1, 7, 4099])('gives the same bits as the composite form and the float32 definition for %i values, in one kernel per update', (size) => {
    const fused = threeUpdates(size, true);
    const composite = threeUpdates(size, false);
    expect(fused.kernels).toEqual([SENSITIVITY_UPDATE_KERNEL, SENSITIVITY_UPDATE_KERNEL, SENSITIVITY_UPDATE_KERNEL]);
    expect(composite.kernels).not.toContain(SENSITIVITY_UPDATE_KERNEL);
    const expected = threeUpdatesByDefinition(size);
    fused.results.forEach((result, i) => {
      expect(Array.from(result)).toEqual(Array.from(composite.results[i]!));
      expect(Array.from(result)).toEqual(expected[i]);
    });
    // Both moved from zero.
    expect(fused.results.every((result) => result.some((value) => value !== 0))).toBe(true);
  });

  it('leaves no tensors behind', async () => {
    await withoutTensorLeaks(() => {
      threeUpdates(33, true);
    });
  });
});
