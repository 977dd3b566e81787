import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '@lora/core';
import { geluErf, geluTanh as coreGeluTanh, silu as coreSilu } from '@lora/core/internal';
import { PACKAGE } from './config-fields.js';

/** Activation names from Hugging Face configs (`activation_function`, `hidden_act`) that this package implements. */
export const ACTIVATION_NAMES = ['gelu', 'gelu_new', 'gelu_pytorch_tanh', 'gelu_fast', 'relu', 'silu', 'swish', 'tanh'] as const;

/** One of {@link ACTIVATION_NAMES}. */
export type ActivationName = (typeof ACTIVATION_NAMES)[number];

/** Whether a config's activation name is one this package implements (checked when the config is read, before any layer is built). */
export function isActivationName(name: string): name is ActivationName {
  return (ACTIVATION_NAMES as readonly string[]).includes(name);
}

/**
 * GPT-2's `gelu_new`: the tanh approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), with its
 * derivative written out; on the WASM backend one fused kernel each way (core's).
 */
export function geluTanh(x: tf.Tensor): tf.Tensor {
  return coreGeluTanh(x);
}

/** BERT's exact `gelu`: 0.5·x·(1 + erf(x/√2)); on the WASM backend one fused kernel each way (core's). */
export function geluExact(x: tf.Tensor): tf.Tensor {
  return geluErf(x);
}

/** SiLU (swish) x·σ(x), Llama's `silu`; on the WASM backend one fused kernel each way (core's). */
export function silu(x: tf.Tensor): tf.Tensor {
  return coreSilu(x);
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
        expected: `one of ${ACTIVATION_NAMES.join(', ')}`,
      });
  }
}
