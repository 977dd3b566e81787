import * as tf from '@tensorflow/tfjs-core';
import { addMany } from '@lora/core/internal';
import type { OrthogonalRegularizer } from './adalora-config.js';
import type { AdaLoraAdapter } from './adalora-layer.js';

/** Options for {@link orthogonalRegularization}. */
export interface OrthogonalRegularizationOptions {
  /** `orthRegWeight` (PEFT's default 0.5). */
  readonly weight: number;
  /** `peft` (default) or `paper`; see {@link OrthogonalRegularizer}. */
  readonly form?: OrthogonalRegularizer;
}

/**
 * AdaLoRA's orthogonal regulariser over the modules of one adapter, differentiable (call it inside
 * the gradient tape; core's trainer does, through the plugin's `extraLoss` hook).
 *
 * - `peft` (default), as PEFT's `AdaLoraModel.forward`: `weight · (1/N) · Σ ‖M − I‖_F` over every A
 *   (M = A·Aᵀ) and every B (M = Bᵀ·B), N = number of A and B matrices, rank-0 modules included with
 *   norm 0. The norm is not squared and the sum is averaged.
 * - `paper`, the AdaLoRA paper's R(P, Q) summed over modules: `weight · Σ (‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F)`.
 *
 * @returns a scalar the caller disposes, or null when `weight` is 0 or there are no modules.
 * @example
 * const loss = tf.tidy(() => tf.add(taskLoss, orthogonalRegularization(adapters, { weight: 0.5 }) ?? 0));
 */
export function orthogonalRegularization(adapters: readonly AdaLoraAdapter[], options: OrthogonalRegularizationOptions): tf.Scalar | null {
  if (options.weight === 0 || adapters.length === 0) return null;
  const squared = (options.form ?? 'peft') === 'paper';
  return tf.tidy(() => {
    const terms: tf.Scalar[] = [];
    for (const adapter of adapters) {
      const residuals = adapter.orthogonalResiduals({ squared });
      if (residuals) terms.push(...residuals);
    }
    const count = adapters.length * 2;
    if (terms.length === 0) return tf.scalar(0);
    // Not tf.addN: WebGPU refuses one kernel over more than 7 inputs (see addMany).
    const sum = addMany(terms);
    return (squared ? tf.mul(sum, options.weight) : tf.mul(tf.div(sum, count), options.weight)) as tf.Scalar;
  });
}
