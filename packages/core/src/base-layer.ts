import type * as tf from '@tensorflow/tfjs-core';
import type { Linear } from './linear.js';
import type { Module, TensorModule } from './module.js';

/**
 * What an adapter needs from the layer it wraps. `Linear` implements it; a base transform
 * (4-bit `QuantLinear` in `@lora/quant`) provides another implementation with the same
 * `forward`, so any adapter can wrap either.
 */
export interface BaseLayer extends TensorModule {
  /** Size of the input's last axis (PyTorch's `in_features`). */
  readonly inFeatures: number;
  /** Size of the output's last axis (PyTorch's `out_features`). */
  readonly outFeatures: number;
  /** Bias [out], or null. */
  readonly bias: tf.Variable | null;
  /** True when the stored weight is [in, out] (GPT-2's Conv1D), false for PyTorch's [out, in]. */
  readonly fanInFanOut: boolean;
  /** `x·Wᵀ` without the bias. */
  forwardWithoutBias(input: tf.Tensor): tf.Tensor;
  /** The weight as a dense float32 [out, in] tensor. The caller disposes it. */
  denseWeight(): tf.Tensor2D;
  /**
   * Replace the weight with a dense [out, in] tensor (not taken over: the caller still disposes it).
   * Returns a note when the layer cannot hold it exactly (a quantized base re-quantizes).
   */
  assignDenseWeight(weight: tf.Tensor2D): {
    /** False when the stored weight differs from the one given (a quantized base re-quantized it). */
    readonly exact: boolean;
    /** When not exact: a sentence on the loss (e.g. the max and mean absolute error), collected by merge. */
    readonly note?: string;
  };
  /**
   * Optional: capture the exact state before a merge. When present, unmerge calls
   * {@link BaseLayer.restoreSnapshot} with it instead of subtracting ΔW, so a lossy base
   * (4-bit) returns to its original bytes.
   */
  snapshotForMerge?(): unknown;
  /** Optional: restore a state captured by {@link BaseLayer.snapshotForMerge}. */
  restoreSnapshot?(snapshot: unknown): void;
  /**
   * Optional: this layer as a float32 core `Linear` in the layout of the layer it came from (a 4-bit
   * base restores GPT-2's Conv1D layout). Used by `mergeAndUnload({ dequantize: true })`; without it,
   * a `Linear` is built from {@link BaseLayer.denseWeight} and the bias.
   */
  toLinear?(): Linear;
}

/** True when `module` can be wrapped by an adapter layer. */
export function isBaseLayer(module: Module): module is Module & BaseLayer {
  const candidate = module as unknown as Partial<BaseLayer>;
  return (
    typeof candidate.denseWeight === 'function' &&
    typeof candidate.assignDenseWeight === 'function' &&
    typeof candidate.forwardWithoutBias === 'function' &&
    typeof candidate.inFeatures === 'number'
  );
}

/**
 * True for a base layer that keeps its weight in some form other than a float32 parameter named
 * `weight` (a 4-bit `QuantLinear`'s packed codes): one that must be dequantized to be merged exactly
 * or written as a float checkpoint. False for core's `Linear` and for other float layers (a tied
 * output head, whose `weight` is the embedding's variable).
 */
export function holdsNonFloatWeight(module: Module): boolean {
  if (!isBaseLayer(module)) return false;
  const weight = module.getOwnParameter('weight');
  return weight === undefined || weight.dtype !== 'float32';
}
