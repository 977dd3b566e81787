import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adamWUpdate, ADAMW_UPDATE_KERNEL } from '../src/adamw-update.js';
import { initRuntime, restoreWasmKernels, useFastWasmKernels } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { withoutTensorLeaks } from '../src/testing.js';

const values = (size: number, seed: number): number[] => Array.from({ length: size }, (_, i) => Math.sin(i * 1.7 + seed) * (1 + (i % 5)));

/** Three updates in a row (moments carried over) of a parameter of `size` values; returns the final param, m and v. */
async function threeUpdates(size: number, decay: number | null, fused: boolean): Promise<{ kernels: string[]; results: Float32Array[] }> {
  if (!fused) restoreWasmKernels('wasm');
  try {
    let param: tf.Tensor = tf.tensor1d(values(size, 1));
    let m: tf.Tensor = tf.zeros([size]);
    let v: tf.Tensor = tf.zeros([size]);
    const spy = spyOnKernels();
    for (let step = 1; step <= 3; step++) {
      const gradient = tf.tensor1d(values(size, 10 + step));
      const next = adamWUpdate(
        { param, gradient, m, v },
        { beta1: 0.9, beta2: 0.999, epsilon: 1e-8, stepSize: 1e-3 / (1 - 0.9 ** step), sqrtCorrection2: Math.sqrt(1 - 0.999 ** step), decay },
      );
      tf.dispose([param, m, v, gradient]);
      ({ param, m, v } = next);
    }
    spy.stop();
    const results = [param, m, v].map((tensor) => tensor.dataSync() as Float32Array);
    tf.dispose([param, m, v]);
    return { kernels: spy.calls.map((call) => call.kernelName), results };
  } finally {
    useFastWasmKernels('wasm');
  }
}

describe('adamWUpdate: the fused WASM kernel', () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('wasm');
  });
  afterAll(() => {
    useFastWasmKernels('wasm');
  });

  it.each([
    [1, null],
    [7, 0.99],
    [4099, null],
    [4099, 1 - 1e-3 * 0.01],
  ])('gives the same bits as the composite form for %i values (decay %s), in one kernel per update', async (size, decay) => {
    const fused = await threeUpdates(size, decay, true);
    const composite = await threeUpdates(size, decay, false);
    expect(fused.kernels).toEqual([ADAMW_UPDATE_KERNEL, ADAMW_UPDATE_KERNEL, ADAMW_UPDATE_KERNEL]);
    expect(composite.kernels).not.toContain(ADAMW_UPDATE_KERNEL);
    fused.results.forEach((result, i) => expect(Array.from(result)).toEqual(Array.from(composite.results[i]!)));
    // The parameter moved.
    expect(fused.results[0]!.some((value, i) => value !== Math.fround(values(size, 1)[i]!))).toBe(true);
  });

  it('leaves no tensors behind', async () => {
    await withoutTensorLeaks(async () => {
      await threeUpdates(33, 0.9, true);
    });
  });
});
