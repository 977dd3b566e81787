import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of the fused exact gelu (value), registered for a backend by core's WASM kernels. */
export const GELU_ERF_KERNEL = 'LoraGeluErf';
/** tfjs kernel name of the fused exact gelu's gradient: inputs `dy` and `x`, output dy·gelu′(x). */
export const GELU_ERF_GRAD_KERNEL = 'LoraGeluErfGrad';

/** The composite form, for backends without the fused kernel: tfjs's erf and its gradient. */
function compositeGeluErf(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)));
}

/** The fused kernel's gradient: one more kernel, which recomputes Φ(x) from x. */
function registerGeluErfGradient(): void {
  if (tf.getGradient(GELU_ERF_KERNEL) !== undefined) return;
  tf.registerGradient({
    kernelName: GELU_ERF_KERNEL,
    inputsToSave: ['x'],
    gradFunc: (dy, saved) => {
      const [x] = saved as [tf.Tensor];
      return { x: () => tf.engine().runKernel(GELU_ERF_GRAD_KERNEL, { dy: dy as tf.Tensor, x }, {}) as tf.Tensor };
    },
  });
}

/**
 * BERT's exact `gelu`, x·Φ(x) = 0.5·x·(1 + erf(x/√2)), differentiable. On a backend with core's
 * fused kernel (the WASM backend after `initRuntime()`: one SIMD pass each way, where tfjs's Erf
 * and the Exp of its gradient are scalar loops) it runs that; elsewhere the composite form.
 */
export function geluErf(x: tf.Tensor): tf.Tensor {
  const fused = x.dtype === 'float32' && activeBackendHasKernels(GELU_ERF_KERNEL, GELU_ERF_GRAD_KERNEL);
  if (!fused) return compositeGeluErf(x);
  registerGeluErfGradient();
  return tf.engine().runKernel(GELU_ERF_KERNEL, { x }, {}) as tf.Tensor;
}
