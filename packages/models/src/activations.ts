import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '@lora/core';
import { PACKAGE } from './config-fields.js';

/** Activation names from Hugging Face configs (`activation_function`, `hidden_act`) that this package implements. */
export type ActivationName = 'gelu' | 'gelu_new' | 'gelu_pytorch_tanh' | 'gelu_fast' | 'relu' | 'silu' | 'swish' | 'tanh';

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

const GELU_CUBIC = 0.044715;
/** 2·√(2/π): 0.5·(1 + tanh(u)) = σ(2u). */
const TWO_SQRT_2_OVER_PI = 2 * SQRT_2_OVER_PI;

/**
 * GPT-2's `gelu_new` with its derivative written out: y = x·σ(2c·x·(1 + a·x²)), a = 0.044715,
 * c = √(2/π), and dy/dx = σ + y·(1 − σ)·2c·(1 + 3a·x²). The tape would otherwise differentiate
 * every multiply of the forward chain (22 elementwise kernels per call, forward and backward,
 * on the MLP's largest activation; 15 this way).
 */
const geluTanhWithGradient = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
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

/** GPT-2's `gelu_new`: the tanh approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
export function geluTanh(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => geluTanhWithGradient(x) as tf.Tensor);
}

/** BERT's exact `gelu`: 0.5·x·(1 + erf(x/√2)). */
export function geluExact(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1)));
}

/** SiLU (swish) x·σ(x), Llama's `silu`. */
export function silu(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(x, tf.sigmoid(x)));
}

/**
 * The activation function named in a config.
 * @throws {ConfigError} naming `field` for an activation this package does not implement.
 */
export function activationFunction(name: string, field: string): (x: tf.Tensor) => tf.Tensor {
  switch (name) {
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
    case 'gelu_fast':
      return geluTanh;
    case 'gelu':
      return geluExact;
    case 'relu':
      return (x) => tf.relu(x);
    case 'silu':
    case 'swish':
      return silu;
    case 'tanh':
      return (x) => tf.tanh(x);
    default:
      throw new ConfigError({
        plugin: PACKAGE,
        field,
        received: name,
        expected: 'one of gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish, tanh',
      });
  }
}
