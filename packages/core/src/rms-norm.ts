import * as tf from '@tensorflow/tfjs-core';
import { registerNormGradient, type NormKernels } from './layer-norm.js';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of the fused RMSNorm (inputs `x`, `weight`; attribute `eps`), registered by core's WASM kernels. */
export const RMS_NORM_KERNEL = 'LoraRmsNorm';
/** The fused RMSNorm's input gradient: inputs `dy`, `x`, `weight`; attribute `eps`. */
export const RMS_NORM_GRAD_KERNEL = 'LoraRmsNormGrad';
/** The fused RMSNorm's weight gradient Σ dy·x̂ over the rows: inputs `dy`, `x`; attribute `eps`. */
export const RMS_NORM_WEIGHT_GRAD_KERNEL = 'LoraRmsNormWeightGrad';

const RMS_NORM_KERNELS: NormKernels = { value: RMS_NORM_KERNEL, gradient: RMS_NORM_GRAD_KERNEL, weightGradient: RMS_NORM_WEIGHT_GRAD_KERNEL };

/**
 * RMSNorm over the last axis, x·r·w with r = 1/√(mean(x²) + eps) (Llama's `LlamaRMSNorm`),
 * differentiable. On a backend with core's fused kernels (the WASM backend after `initRuntime()`)
 * one kernel for the value and one for each gradient, where the composite form runs five forward
 * and about ten backward; elsewhere the composite form.
 */
export function rmsNorm(input: tf.Tensor, weight: tf.Tensor, eps: number): tf.Tensor {
  const fused = input.dtype === 'float32' && activeBackendHasKernels(RMS_NORM_KERNEL, RMS_NORM_GRAD_KERNEL, RMS_NORM_WEIGHT_GRAD_KERNEL);
  if (!fused) {
    return tf.tidy(() => {
      const meanSquare = tf.mean(tf.square(input), input.rank - 1, true);
      return tf.mul(tf.mul(input, tf.rsqrt(tf.add(meanSquare, eps))), weight);
    });
  }
  registerNormGradient(RMS_NORM_KERNELS, false);
  return tf.engine().runKernel(RMS_NORM_KERNEL, { x: input, weight }, { eps }) as tf.Tensor;
}
