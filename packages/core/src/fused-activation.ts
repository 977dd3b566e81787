import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/** The two kernels of a fused elementwise activation: its value (input `x`) and its gradient (inputs `dy` and `x`). */
export interface ActivationKernels {
  readonly value: string;
  readonly gradient: string;
}

/**
 * An elementwise activation, differentiable: on a backend with both of its fused kernels (core's
 * WASM kernels) one kernel each way, the gradient recomputing what it needs from x (cheaper than
 * keeping it); elsewhere `composite` (whose own gradient the tape takes, or it defines).
 */
export function fusedActivation(x: tf.Tensor, kernels: ActivationKernels, composite: (x: tf.Tensor) => tf.Tensor): tf.Tensor {
  if (x.dtype !== 'float32' || !activeBackendHasKernels(kernels.value, kernels.gradient)) return tf.tidy(() => composite(x));
  if (tf.getGradient(kernels.value) === undefined) {
    tf.registerGradient({
      kernelName: kernels.value,
      inputsToSave: ['x'],
      gradFunc: (dy, saved) => {
        const [input] = saved as [tf.Tensor];
        return { x: () => tf.engine().runKernel(kernels.gradient, { dy: dy as tf.Tensor, x: input }, {}) as tf.Tensor };
      },
    });
  }
  return tf.engine().runKernel(kernels.value, { x }, {}) as tf.Tensor;
}
