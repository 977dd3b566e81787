import type * as tf from '@tensorflow/tfjs-core';
import { LORA_BACKWARD_KERNEL, LORA_FORWARD_KERNEL, LORA_LINEAR_BACKWARD_KERNEL, LORA_LINEAR_DROPOUT_FORWARD_KERNEL, LORA_LINEAR_FORWARD_KERNEL } from './low-rank-train.js';
import { simdLoraBackward, simdLoraForward, type LoraBaseWeight } from './wasm-simd-matmul.js';

/** The op checks simdLoraPassesFit before it calls these kernels, so a null is a caller's bug. */
function notFitting(kernelName: string): never {
  throw new Error(`[@lora/core] ${kernelName}: the backend's kernel cannot take these operands (check simdLoraPassesFit first)`);
}

const loraForwardKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { x, a, b, base } = inputs as Record<'x' | 'a' | 'b' | 'base', tf.TensorInfo>;
  return simdLoraForward(backend as tf.KernelBackend, x, a, b, base, attrs!['scaling'] as number) ?? notFitting(LORA_FORWARD_KERNEL);
};

const loraBackwardKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { dy, x, a, b, hs } = inputs as Record<'dy' | 'x' | 'a' | 'b' | 'hs', tf.TensorInfo>;
  return simdLoraBackward(backend as tf.KernelBackend, dy, x, a, b, hs, attrs!['scaling'] as number, attrs!['inputGradient'] !== false) ?? notFitting(LORA_BACKWARD_KERNEL);
};

/** The base weight as the linear kernels' inputs and attributes give it. */
function baseWeight(inputs: tf.NamedTensorInfoMap, attrs: tf.NamedAttrMap | undefined): LoraBaseWeight {
  return { weight: inputs['w']!, inOut: attrs!['inOut'] === true, bias: inputs['bias'] ?? null };
}

const loraLinearForwardKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { x, a, b } = inputs as Record<'x' | 'a' | 'b', tf.TensorInfo>;
  const result = simdLoraForward(backend as tf.KernelBackend, x, a, b, baseWeight(inputs, attrs), attrs!['scaling'] as number, inputs['xa']);
  return result ?? notFitting(inputs['xa'] === undefined ? LORA_LINEAR_FORWARD_KERNEL : LORA_LINEAR_DROPOUT_FORWARD_KERNEL);
};

const loraLinearBackwardKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { dy, x, a, b, hs } = inputs as Record<'dy' | 'x' | 'a' | 'b' | 'hs', tf.TensorInfo>;
  const inputGradient = attrs!['inputGradient'] !== false;
  const gradients = simdLoraBackward(backend as tf.KernelBackend, dy, x, a, b, hs, attrs!['scaling'] as number, inputGradient, baseWeight(inputs, attrs), inputs['xa']);
  return gradients ?? notFitting(LORA_LINEAR_BACKWARD_KERNEL);
};

/** A LoRA layer's fused passes (wasm/low-rank-train.h, in the batched matMul's module), by name: without and with the base layer's product. */
export const WASM_LOW_RANK_TRAIN_KERNELS: Readonly<Record<string, tf.KernelFunc>> = {
  [LORA_FORWARD_KERNEL]: loraForwardKernel,
  [LORA_BACKWARD_KERNEL]: loraBackwardKernel,
  [LORA_LINEAR_FORWARD_KERNEL]: loraLinearForwardKernel,
  [LORA_LINEAR_DROPOUT_FORWARD_KERNEL]: loraLinearForwardKernel,
  [LORA_LINEAR_BACKWARD_KERNEL]: loraLinearBackwardKernel,
};
