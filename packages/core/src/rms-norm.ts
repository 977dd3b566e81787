import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of the fused RMSNorm (inputs `x`, `weight`; attribute `eps`), registered by core's WASM kernels. */
export const RMS_NORM_KERNEL = 'LoraRmsNorm';
/** The fused RMSNorm's input gradient: inputs `dy`, `x`, `weight`; attribute `eps`. */
export const RMS_NORM_GRAD_KERNEL = 'LoraRmsNormGrad';
/** The fused RMSNorm's weight gradient Σ dy·x̂ over the rows: inputs `dy`, `x`; attribute `eps`. */
export const RMS_NORM_WEIGHT_GRAD_KERNEL = 'LoraRmsNormWeightGrad';

/**
 * The fused kernel's gradient, one thunk per input: the tape calls only those of inputs it
 * differentiates (so a frozen weight costs nothing).
 */
function registerRmsNormGradient(): void {
  if (tf.getGradient(RMS_NORM_KERNEL) !== undefined) return;
  tf.registerGradient({
    kernelName: RMS_NORM_KERNEL,
    inputsToSave: ['x', 'weight'],
    gradFunc: (dy, saved, attrs) => {
      const [x, weight] = saved as [tf.Tensor, tf.Tensor];
      const upstream = dy as tf.Tensor;
      const eps = { eps: attrs['eps'] as number };
      return {
        x: () => tf.engine().runKernel(RMS_NORM_GRAD_KERNEL, { dy: upstream, x, weight }, eps) as tf.Tensor,
        weight: () => tf.engine().runKernel(RMS_NORM_WEIGHT_GRAD_KERNEL, { dy: upstream, x }, eps) as tf.Tensor,
      };
    },
  });
}

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
  registerRmsNormGradient();
  return tf.engine().runKernel(RMS_NORM_KERNEL, { x: input, weight }, { eps }) as tf.Tensor;
}
