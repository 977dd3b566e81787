import * as tf from '@tensorflow/tfjs-core';
import { initRuntime } from '@lora/core';
import { CAUSAL_ATTENTION_GRAD_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_MIX_KERNEL, CAUSAL_SCORES_KERNEL, spyOnKernels } from '@lora/core/internal';
import { expectSameValues, expectTensorsClose, seededRandomValues } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { causalMaskBias, paddingMaskBias, scaledDotProductAttention } from '../src/index.js';
import { withoutLeaks } from './helpers.js';

const [BATCH, HEADS, TIME, DEPTH] = [2, 3, 11, 5];

/** Attention's output and the gradients of Σ output·w with respect to q, k and v, with or without `causal` (and `dropout`, when given). */
function attend(causal: boolean, bias: () => tf.Tensor, dropout?: (probabilities: tf.Tensor) => tf.Tensor): { tensors: tf.Tensor[]; kernels: string[] } {
  const shape = [BATCH, HEADS, TIME, DEPTH];
  const size = BATCH * HEADS * TIME * DEPTH;
  const [q, k, v, w] = [1, 2, 3, 4].map((seed) => tf.tensor(seededRandomValues(size, seed), shape));
  const mask = bias();
  const spy = spyOnKernels();
  const f = (qi: tf.Tensor, ki: tf.Tensor, vi: tf.Tensor): tf.Tensor => tf.sum(tf.mul(scaledDotProductAttention(qi, ki, vi, { scale: 0.4, bias: mask, causal, dropout }), w!));
  const { value, grads } = tf.valueAndGrads(f)([q!, k!, v!]);
  spy.stop();
  const output = tf.tidy(() => scaledDotProductAttention(q!, k!, v!, { scale: 0.4, bias: mask, causal, dropout }));
  tf.dispose([q!, k!, v!, w!, mask, value]);
  return { tensors: [output, ...grads], kernels: spy.calls.map((call) => call.kernelName) };
}

describe('scaledDotProductAttention with a causal mask on WASM', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  const causalKernels = (kernels: string[]): string[] =>
    kernels.filter((name) => [CAUSAL_SCORES_KERNEL, CAUSAL_MIX_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL].includes(name)).sort();

  it('gives the full products’ output and gradients in one kernel each way, computing only the triangle', async () => {
    await withoutLeaks(() => {
      const bias = (): tf.Tensor => causalMaskBias(TIME, TIME);
      const whole = attend(true, bias);
      const full = attend(false, bias);
      expect(causalKernels(whole.kernels)).toEqual([CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL]);
      expect(whole.kernels.filter((name) => name === 'BatchMatMul' || /Softmax/.test(name))).toEqual([]);
      expect(causalKernels(full.kernels)).toEqual([]);
      // Masked probabilities are ~0 (exp of −1e9·scale), not exactly: the full product's sums include them.
      whole.tensors.forEach((tensor, i) => expectTensorsClose(tensor, full.tensors[i]!, { rtol: 1e-5, atol: 1e-6 }));
      tf.dispose([...whole.tensors, ...full.tensors]);
    });
  });

  it('with dropout on the probabilities, multiplies only the triangle around its softmax, with the same results', async () => {
    await withoutLeaks(() => {
      const bias = (): tf.Tensor => causalMaskBias(TIME, TIME);
      // An identity "dropout" keeps the values comparable; what matters is that the probabilities exist.
      const triangle = attend(true, bias, (probabilities) => tf.mul(probabilities, 1));
      const whole = attend(true, bias);
      // q·kᵀ and p·v forward; dq, dk from the scores', dp, dv from the output's.
      expect(causalKernels(triangle.kernels)).toEqual([...Array(4).fill(CAUSAL_MIX_KERNEL), CAUSAL_SCORES_KERNEL, CAUSAL_SCORES_KERNEL]);
      expect(triangle.kernels.filter((name) => name === 'BatchMatMul')).toEqual([]);
      // One kernel or the separate ones: the same arithmetic, value for value.
      triangle.tensors.forEach((tensor, i) => expectSameValues(tensor.dataSync(), whole.tensors[i]!.dataSync(), ['output', 'dq', 'dk', 'dv'][i]));
      tf.dispose([...triangle.tensors, ...whole.tensors]);
    });
  });

  it('multiplies in full with padding as well (a fully masked row weighs the keys as before)', async () => {
    await withoutLeaks(() => {
      const bias = (): tf.Tensor => tf.tidy(() => tf.add(causalMaskBias(TIME, TIME), paddingMaskBias(tf.tensor2d([Array(TIME).fill(1), [0, 0, ...Array(TIME - 2).fill(1)]]))));
      const { tensors, kernels } = attend(true, bias);
      expect(causalKernels(kernels)).toEqual([]);
      tf.dispose(tensors);
    });
  });
});
