import * as tf from '@tensorflow/tfjs-core';
import { lengthsFit, optionKernelAttrs, registerQkvAttentionGradient, type CausalAttentionOptions } from './causal-attention.js';
import { activeBackendHasKernels } from './registered-kernels.js';
import { simdCausalAttentionFits } from './wasm-simd-matmul.js';

/**
 * tfjs kernel name of bidirectional self-attention (an encoder's, BERT's) in one kernel: inputs `q`,
 * `k`, `v` [B, T, heads·D] in the layers' layout, attributes `heads`, `scale`, `keyLengths` (a length
 * per sequence, right padding; empty: none) and the dropout ones of core's causal attention kernel;
 * outputs o = P·v [B, T, heads·D], P = softmax(scale·q·kᵀ) over each sequence's keys, and `stats`
 * [B, heads, T, 2] (each query row's max and 1/Σ, from which the gradient recomputes P). Registered
 * by core's WASM kernels (wasm/causal-attention.h's bidirectional form); differentiable through
 * {@link ATTENTION_GRAD_KERNEL}.
 */
export const ATTENTION_KERNEL = 'LoraAttention';
/** tfjs kernel name of its gradient: inputs `dy`, `q`, `k`, `v`, `stats`, the forward kernel's attributes; outputs dq, dk, dv. */
export const ATTENTION_GRAD_KERNEL = 'LoraAttentionGrad';

/**
 * Bidirectional self-attention softmax(scale·q·kᵀ + padding mask)·v, an encoder's (BERT's), for q,
 * k, v [B, T, heads·D] in the layers' layout (as separate projections give them, each head's D
 * values side by side), the result in that layout too: one kernel forward and one backward on a
 * backend with core's attention kernels (the WASM backend after `initRuntime()`), float32, T up to
 * about 4,000 at D = 64. No head is split out or merged back, and the [B, heads, T, T] probabilities
 * are neither written nor kept (the gradient recomputes them). With `options.keyLengths`, the batch
 * is right-padded: keys past a sequence's length are masked for every query, as a padding mask
 * masks them (padding queries attend to their sequence's tokens; padding keys get no gradient).
 * With `options.dropout`, the probabilities are dropped before they multiply v with the mask core's
 * `dropout` gives the [B, heads, T, T] tensor of them. Returns null otherwise (the caller computes
 * it another way), drawing no seed.
 * @throws {ConfigError} for a dropout outside [0, 1) or a seed that is not a 32-bit unsigned integer.
 */
export function bidirectionalAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, scale: number, options: { readonly heads: number } & CausalAttentionOptions): tf.Tensor | null {
  const { heads } = options;
  const sameShape = (a: tf.Tensor): boolean => a.dtype === 'float32' && a.rank === 3 && a.shape.every((size, axis) => size === q.shape[axis]);
  if (![q, k, v].every(sameShape) || !Number.isInteger(heads) || heads < 1 || q.shape[2]! % heads !== 0 || !activeBackendHasKernels(ATTENTION_KERNEL, ATTENTION_GRAD_KERNEL)) return null;
  const [batch, t, width] = q.shape as [number, number, number];
  if (!lengthsFit(options.keyLengths, batch, t) || !simdCausalAttentionFits(tf.backend(), t, width / heads)) return null;
  if (tf.getGradient(ATTENTION_KERNEL) === undefined) registerQkvAttentionGradient(ATTENTION_KERNEL, ATTENTION_GRAD_KERNEL);
  return tf.tidy(() => {
    const [o] = tf.engine().runKernel(ATTENTION_KERNEL, { q, k, v }, { scale, heads, ...optionKernelAttrs(options) }) as tf.Tensor[];
    // The stats stay on the tape, saved for the gradient, until it is disposed; outside a tape tidy frees them.
    return o!;
  });
}
