import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { lowRankAdd, LOW_RANK_ADD_KERNEL, LOW_RANK_ADD_MAX_ROWS } from '../src/low-rank-add.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

/** base + s·(x·Aᵀ)·Bᵀ in float64. */
function reference(x: number[], a: number[], b: number[], base: number[], rows: number, inFeatures: number, rank: number, outFeatures: number, s: number): number[] {
  const out: number[] = [];
  for (let m = 0; m < rows; m++) {
    const t = Array.from({ length: rank }, (_, r) => s * Array.from({ length: inFeatures }, (_, k) => x[m * inFeatures + k]! * a[r * inFeatures + k]!).reduce((p, q) => p + q, 0));
    for (let j = 0; j < outFeatures; j++) out.push(base[m * outFeatures + j]! + t.reduce((sum, value, r) => sum + value * b[j * rank + r]!, 0));
  }
  return out;
}

const values = (size: number, seed: number): number[] => Array.from({ length: size }, (_, i) => Math.sin(i * 0.37 + seed));

describe('lowRankAdd: a LoRA output at inference in one WASM kernel', () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('wasm');
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it.each([
    [1, 1, 256, 8, 768],
    [2, 3, 19, 5, 7],
    [1, 2, 4, 1, 3],
  ])('matches float64 for x [%i, %i, %i], rank %i, %i outputs', (batch, time, inFeatures, rank, outFeatures) => {
    const rows = batch * time;
    const [x, a, b, base] = [values(rows * inFeatures, 1), values(rank * inFeatures, 2), values(outFeatures * rank, 3), values(rows * outFeatures, 4)];
    const tensors = [
      tf.tensor3d(x, [batch, time, inFeatures]),
      tf.tensor2d(a, [rank, inFeatures]),
      tf.tensor2d(b, [outFeatures, rank]),
      tf.tensor3d(base, [batch, time, outFeatures]),
    ] as const;
    const spy = spyOnKernels();
    const out = lowRankAdd(...tensors, 2.5);
    spy.stop();
    expect(spy.calls.map((call) => call.kernelName)).toEqual([LOW_RANK_ADD_KERNEL]);
    expect(out!.shape).toEqual([batch, time, outFeatures]);
    expectTensorsClose(out!, reference(x, a, b, base, rows, inFeatures, rank, outFeatures, 2.5), { atol: 1e-5, rtol: 1e-5 });
    tf.dispose([out!, ...tensors]);
  });

  it('leaves the work to the products under a gradient tape, for long inputs and on other backends', async () => {
    await withoutTensorLeaks(async () => {
      const a = tf.ones([2, 4]);
      const b = tf.ones([3, 2]);
      const short = tf.ones([1, 4]);
      const long = tf.ones([LOW_RANK_ADD_MAX_ROWS + 1, 4]);
      const [zeros, longZeros] = [tf.zeros([1, 3]), tf.zeros([LOW_RANK_ADD_MAX_ROWS + 1, 3])];
      expect(lowRankAdd(long, a, b, longZeros, 1)).toBeNull();
      tf.grad((x: tf.Tensor) => {
        expect(lowRankAdd(x, a, b, zeros, 1)).toBeNull();
        return tf.sum(x);
      })(short).dispose();
      await tf.setBackend('cpu');
      expect(lowRankAdd(short, a, b, zeros, 1)).toBeNull();
      await tf.setBackend('wasm');
      const inOneCall = lowRankAdd(short, a, b, zeros, 1)!;
      expect(Array.from(inOneCall.dataSync())).toEqual([8, 8, 8]);
      tf.dispose([a, b, short, long, zeros, longZeros, inOneCall]);
    });
  });
});
