import type * as tf from '@tensorflow/tfjs-core';
import { GELU_ERF_GRAD_KERNEL, GELU_ERF_KERNEL } from './gelu-erf.js';
import { GELU_TANH_GRAD_KERNEL, GELU_TANH_KERNEL } from './gelu-tanh.js';
import { simdGelu, type GeluForm } from './wasm-simd-matmul.js';

/**
 * The fused gelu kernels of tfjs's WASM backend, GPT-2's gelu_new and BERT's exact gelu
 * (wasm/gelu-tanh.h, wasm/gelu-erf.h: one SIMD pass each for the value and the gradient, in the
 * batched matMul's module, whose helper thread takes a share of the values). Registered by
 * `useFastWasmKernels` only where the module runs.
 */

/** Registered only where the module runs, so a null is a caller's bug. */
function notRun(kernelName: string): never {
  throw new Error(`[@lora/core] ${kernelName}: the backend's kernel did not run (registered where the batched matMul module does not?)`);
}

const valueKernel =
  (form: GeluForm, kernelName: string): tf.KernelFunc =>
  ({ inputs, backend }) =>
    simdGelu(backend as tf.KernelBackend, inputs['x']!, null, form) ?? notRun(kernelName);

const gradientKernel =
  (form: GeluForm, kernelName: string): tf.KernelFunc =>
  ({ inputs, backend }) => {
    const { dy, x } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo };
    return simdGelu(backend as tf.KernelBackend, x, dy, form) ?? notRun(kernelName);
  };

/** The kernels by name. */
export const WASM_GELU_KERNELS: Readonly<Record<string, tf.KernelFunc>> = {
  [GELU_TANH_KERNEL]: valueKernel('tanh', GELU_TANH_KERNEL),
  [GELU_TANH_GRAD_KERNEL]: gradientKernel('tanh', GELU_TANH_GRAD_KERNEL),
  [GELU_ERF_KERNEL]: valueKernel('erf', GELU_ERF_KERNEL),
  [GELU_ERF_GRAD_KERNEL]: gradientKernel('erf', GELU_ERF_GRAD_KERNEL),
};
