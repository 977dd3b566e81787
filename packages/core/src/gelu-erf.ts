import * as tf from '@tensorflow/tfjs-core';
import { fusedActivation } from './fused-activation.js';

/** tfjs kernel name of the fused exact gelu (value), registered for a backend by core's WASM kernels. */
export const GELU_ERF_KERNEL = 'LoraGeluErf';
/** tfjs kernel name of the fused exact gelu's gradient: inputs `dy` and `x`, output dy·gelu′(x). */
export const GELU_ERF_GRAD_KERNEL = 'LoraGeluErfGrad';

/** The composite form, for backends without the fused kernel: tfjs's erf and its gradient. */
function compositeGeluErf(x: tf.Tensor): tf.Tensor {
  return tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));
}

/**
 * BERT's exact `gelu`, x·Φ(x) = 0.5·x·(1 + erf(x/√2)), differentiable. On a backend with core's
 * fused kernel (the WASM backend after `initRuntime()`: one SIMD pass each way, where tfjs's Erf
 * and the Exp of its gradient are scalar loops) it runs that; elsewhere the composite form.
 */
export function geluErf(x: tf.Tensor): tf.Tensor {
  return fusedActivation(x, { value: GELU_ERF_KERNEL, gradient: GELU_ERF_GRAD_KERNEL }, compositeGeluErf);
}
