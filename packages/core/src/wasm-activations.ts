import type * as tf from '@tensorflow/tfjs-core';
import { GELU_ERF_GRAD_KERNEL, GELU_ERF_KERNEL } from './gelu-erf.js';
import { GELU_TANH_GRAD_KERNEL, GELU_TANH_KERNEL } from './gelu-tanh.js';
import { SILU_GRAD_KERNEL, SILU_KERNEL } from './silu.js';
import { simdActivation, type ActivationForm } from './wasm-simd-matmul.js';

/**
 * The fused activation kernels of tfjs's WASM backend: GPT-2's gelu_new, BERT's exact gelu and
 * Llama's SiLU (wasm/gelu-tanh.h, wasm/gelu-erf.h, wasm/silu.h: one SIMD pass each for the value and
 * the gradient, in the batched matMul's module, whose helper thread takes a share of the values).
 * Registered by `useFastWasmKernels` only where the module runs.
 */

/** Registered only where the module runs, so a null is a caller's bug. */
function notRun(kernelName: string): never {
  throw new Error(`[@lora/core] ${kernelName}: the backend's kernel did not run (registered where the batched matMul module does not?)`);
}

const valueKernel =
  (form: ActivationForm, kernelName: string): tf.KernelFunc =>
  ({ inputs, backend }) =>
    simdActivation(backend as tf.KernelBackend, inputs['x']!, null, form) ?? notRun(kernelName);

const gradientKernel =
  (form: ActivationForm, kernelName: string): tf.KernelFunc =>
  ({ inputs, backend }) => {
    const { dy, x } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo };
    return simdActivation(backend as tf.KernelBackend, x, dy, form) ?? notRun(kernelName);
  };

/** The kernels by name. */
export const WASM_ACTIVATION_KERNELS: Readonly<Record<string, tf.KernelFunc>> = {
  [GELU_TANH_KERNEL]: valueKernel('gelu-tanh', GELU_TANH_KERNEL),
  [GELU_TANH_GRAD_KERNEL]: gradientKernel('gelu-tanh', GELU_TANH_GRAD_KERNEL),
  [GELU_ERF_KERNEL]: valueKernel('gelu-erf', GELU_ERF_KERNEL),
  [GELU_ERF_GRAD_KERNEL]: gradientKernel('gelu-erf', GELU_ERF_GRAD_KERNEL),
  [SILU_KERNEL]: valueKernel('silu', SILU_KERNEL),
  [SILU_GRAD_KERNEL]: gradientKernel('silu', SILU_GRAD_KERNEL),
};
