import * as tf from '@tensorflow/tfjs-core';
import { fusedActivation } from './fused-activation.js';

/** tfjs kernel name of the fused gelu_new (value), registered for a backend by core's WASM kernels. */
export const GELU_TANH_KERNEL = 'LoraGeluTanh';
/** tfjs kernel name of the fused gelu_new gradient: inputs `dy` and `x`, output dy·gelu′(x). */
export const GELU_TANH_GRAD_KERNEL = 'LoraGeluTanhGrad';

const GELU_CUBIC = 0.044715;
/** 2·√(2/π): 0.5·(1 + tanh(u)) = σ(2u). */
const TWO_SQRT_2_OVER_PI = 2 * Math.sqrt(2 / Math.PI);

/**
 * The composite form, for backends without the fused kernel, with its derivative written out:
 * y = x·σ(2c·x·(1 + a·x²)), a = 0.044715, c = √(2/π), and dy/dx = σ + y·(1 − σ)·2c·(1 + 3a·x²).
 * The tape would otherwise differentiate every multiply of the forward chain (22 elementwise
 * kernels per call, forward and backward, on the MLP's largest activation; 15 this way).
 */
const compositeGeluTanh = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const [x, save] = inputs as [tf.Tensor, tf.GradSaveFunc];
  const squared = tf.square(x);
  // x·(1 + a·x²) instead of pow(x, 3): pow is slow on WASM and its gradient needs log/where.
  // 0.5·(1 + tanh(u)) = sigmoid(2u): the same function, and WASM's tanh is a slow scalar loop
  // (about 12× slower than its sigmoid).
  const gate = tf.sigmoid(tf.mul(tf.mul(x, tf.add(tf.mul(squared, GELU_CUBIC), 1)), TWO_SQRT_2_OVER_PI));
  const value = tf.mul(x, gate);
  save([squared, gate, value]);
  return {
    value,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [savedSquared, savedGate, savedValue] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
      const slope = tf.mul(tf.add(tf.mul(savedSquared, 3 * GELU_CUBIC * TWO_SQRT_2_OVER_PI), TWO_SQRT_2_OVER_PI), tf.mul(savedValue, tf.sub(1, savedGate)));
      return tf.mul(dy, tf.add(savedGate, slope));
    },
  };
});

/**
 * GPT-2's `gelu_new`, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), differentiable. On a backend with
 * core's fused kernel (the WASM backend after `initRuntime()`: one pass each way instead of 7
 * kernels forward and 8 backward) it runs that; elsewhere the composite form.
 */
export function geluTanh(x: tf.Tensor): tf.Tensor {
  return fusedActivation(x, { value: GELU_TANH_KERNEL, gradient: GELU_TANH_GRAD_KERNEL }, (input) => compositeGeluTanh(input) as tf.Tensor);
}
