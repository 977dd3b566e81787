import * as tf from '@tensorflow/tfjs-core';
import { initRuntime } from '@lora/core';
import { CAUSAL_MIX_KERNEL, CAUSAL_SCORES_KERNEL, spyOnKernels } from '@lora/core/internal';
import { expectTensorsClose, seededRandomValues } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { causalMaskBias, paddingMaskBias, scaledDotProductAttention } from '../src/index.js';
import { withoutLeaks } from './helpers.js';

const [BATCH, HEADS, TIME, DEPTH] = [2, 3, 11, 5];

/** Attention's output and the gradients of Σ output·w with respect to q, k and v, with or without `causal`. */
function attend(causal: boolean, bias: () => tf.Tensor): { tensors: tf.Tensor[]; kernels: string[] } {
  const shape = [BATCH, HEADS, TIME, DEPTH];
  const size = BATCH * HEADS * TIME * DEPTH;
  const [q, k, v, w] = [1, 2, 3, 4].map((seed) => tf.tensor(seededRandomValues(size, seed), shape));
  const mask = bias();
  const spy = spyOnKernels();
  const f = (qi: tf.Tensor, ki: tf.Tensor, vi: tf.Tensor): tf.Tensor => tf.sum(tf.mul(scaledDotProductAttention(qi, ki, vi, { scale: 0.4, bias: mask, causal }), w!));
  const { value, grads } = tf.valueAndGrads(f)([q!, k!, v!]);
  spy.stop();
  const output = tf.tidy(() => scaledDotProductAttention(q!, k!, v!, { scale: 0.4, bias: mask, causal }));
  tf.dispose([q!, k!, v!, w!, mask, value]);
  return { tensors: [output, ...grads], kernels: spy.calls.map((call) => call.kernelName) };
}

describe('scaledDotProductAttention with a causal mask on WASM', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('gives the full products’ output and gradients, computing only the triangle', async () => {
    await withoutLeaks(() => {
      const bias = (): tf.Tensor => causalMaskBias(TIME, TIME);
      const triangle = attend(true, bias);
      const full = attend(false, bias);
      expect(triangle.kernels.filter((name) => name === CAUSAL_SCORES_KERNEL || name === CAUSAL_MIX_KERNEL)).toHaveLength(2 + 4);
      expect(triangle.kernels.filter((name) => name === 'BatchMatMul')).toEqual([]);
      expect(full.kernels.filter((name) => name === CAUSAL_SCORES_KERNEL || name === CAUSAL_MIX_KERNEL)).toEqual([]);
      // Masked probabilities are ~0 (exp of −1e9·scale), not exactly: the full product's sums include them.
      triangle.tensors.forEach((tensor, i) => expectTensorsClose(tensor, full.tensors[i]!, { rtol: 1e-5, atol: 1e-6 }));
      tf.dispose([...triangle.tensors, ...full.tensors]);
    });
  });

  it('multiplies in full with padding as well (a fully masked row weighs the keys as before)', async () => {
    await withoutLeaks(() => {
      const bias = (): tf.Tensor => tf.tidy(() => tf.add(causalMaskBias(TIME, TIME), paddingMaskBias(tf.tensor2d([Array(TIME).fill(1), [0, 0, ...Array(TIME - 2).fill(1)]]))));
      const { tensors, kernels } = attend(true, bias);
      expect(kernels.filter((name) => name === CAUSAL_SCORES_KERNEL || name === CAUSAL_MIX_KERNEL)).toEqual([]);
      tf.dispose(tensors);
    });
  });
});
