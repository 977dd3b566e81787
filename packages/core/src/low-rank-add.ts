import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of base + s·(x·Aᵀ)·Bᵀ (inputs `x`, `a`, `b`, `base`; attribute `scaling`), registered by core's WASM kernels; not differentiable. */
export const LOW_RANK_ADD_KERNEL = 'LoraLowRankAdd';

/** Rows up to which the one-call form is used: token-by-token generation; longer inputs are products' work. */
export const LOW_RANK_ADD_MAX_ROWS = 64;

/** Whether an input of `rows` rows is one {@link lowRankAdd} takes (no tape recording, few rows), backend aside. */
export function lowRankAddTakes(rows: number): boolean {
  return tf.engine().state.gradientDepth === 0 && rows <= LOW_RANK_ADD_MAX_ROWS;
}

/**
 * `base + scaling·(x·Aᵀ)·Bᵀ` over the last axis (x [..., in], A [rank, in], B [out, rank], base
 * [..., out]) as one kernel, for a LoRA layer's output at inference: when no gradient tape records,
 * the inputs are float32 with at most {@link LOW_RANK_ADD_MAX_ROWS} rows, and the backend has core's
 * fused kernels (the WASM backend after `initRuntime()`). Returns null otherwise (the caller
 * computes the products).
 */
export function lowRankAdd(x: tf.Tensor, a: tf.Tensor, b: tf.Tensor, base: tf.Tensor, scaling: number): tf.Tensor | null {
  const rows = x.size / a.shape[1]!;
  const fused =
    lowRankAddTakes(rows) &&
    [x, a, b, base].every((tensor) => tensor.dtype === 'float32') &&
    activeBackendHasKernels(LOW_RANK_ADD_KERNEL);
  return fused ? (tf.engine().runKernel(LOW_RANK_ADD_KERNEL, { x, a, b, base }, { scaling }) as tf.Tensor) : null;
}
