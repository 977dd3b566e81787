import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of the fused sensitivity update (inputs `param`, `gradient`, `sensitivity`, `uncertainty`; outputs the new sensitivity and uncertainty), registered by core's WASM kernels. */
export const SENSITIVITY_UPDATE_KERNEL = 'LoraSensitivityUpdate';

/**
 * One update of a parameter's smoothed sensitivity and uncertainty (AdaLoRA's importance scores,
 * PEFT's `update_ipt`): with I = |p·g|, s′ = s·β1 + I·(1 − β1) and u′ = u·β2 + |I − s′|·(1 − β2).
 * On a backend with core's fused kernels (the WASM backend after `initRuntime()`) one kernel over
 * the tensor instead of 10; the fused kernel runs the same float32 operations in the same order, so
 * both give the same bits. Not differentiable. The caller disposes the results.
 */
export function sensitivityUpdate(
  tensors: { param: tf.Tensor; gradient: tf.Tensor; sensitivity: tf.Tensor; uncertainty: tf.Tensor },
  scalars: { readonly beta1: number; readonly beta2: number },
): { sensitivity: tf.Tensor; uncertainty: tf.Tensor } {
  const { param, gradient, sensitivity, uncertainty } = tensors;
  const { beta1, beta2 } = scalars;
  const fused = [param, gradient, sensitivity, uncertainty].every((tensor) => tensor.dtype === 'float32' && tensor.size === param.size) && activeBackendHasKernels(SENSITIVITY_UPDATE_KERNEL);
  if (fused) {
    const [smoothed, deviation] = tf.engine().runKernel(SENSITIVITY_UPDATE_KERNEL, { param, gradient, sensitivity, uncertainty }, { beta1, beta2 }) as tf.Tensor[];
    return { sensitivity: smoothed!, uncertainty: deviation! };
  }
  return tf.tidy(() => {
    const importance = tf.abs(tf.mul(param, gradient));
    const smoothed = tf.add(tf.mul(sensitivity, beta1), tf.mul(importance, 1 - beta1));
    return { sensitivity: smoothed, uncertainty: tf.add(tf.mul(uncertainty, beta2), tf.mul(tf.abs(tf.sub(importance, smoothed)), 1 - beta2)) };
  });
}
