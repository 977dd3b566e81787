import * as tf from '@tensorflow/tfjs-core';
import { fusedActivation } from './fused-activation.js';

/** tfjs kernel name of the fused SiLU (value), registered for a backend by core's WASM kernels. */
export const SILU_KERNEL = 'LoraSilu';
/** tfjs kernel name of the fused SiLU's gradient: inputs `dy` and `x`, output dy·silu′(x). */
export const SILU_GRAD_KERNEL = 'LoraSiluGrad';

/** The composite form, for backends without the fused kernel: x·sigmoid(x), whose gradient the tape takes. */
function compositeSilu(x: tf.Tensor): tf.Tensor {
  return tf.mul(x, tf.sigmoid(x));
}

/**
 * SiLU (swish), x·σ(x), Llama's activation, differentiable. On a backend with core's fused kernel
 * (the WASM backend after `initRuntime()`: one SIMD pass each way instead of 2 kernels forward and
 * 5 backward, tfjs's sigmoid being a scalar loop there) it runs that; elsewhere the composite form.
 */
export function silu(x: tf.Tensor): tf.Tensor {
  return fusedActivation(x, { value: SILU_KERNEL, gradient: SILU_GRAD_KERNEL }, compositeSilu);
}
