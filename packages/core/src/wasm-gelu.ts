import type * as tf from '@tensorflow/tfjs-core';
import { GELU_TANH_GRAD_KERNEL, GELU_TANH_KERNEL } from './gelu-tanh.js';
import { simdGeluTanh } from './wasm-simd-matmul.js';

/**
 * The fused gelu_new kernels of tfjs's WASM backend (wasm/gelu-tanh.h: one SIMD pass each for the
 * value and the gradient, in the batched matMul's module, whose helper thread takes a share of the
 * values). Registered by `useFastWasmKernels` only where the module runs.
 */

/** Registered only where the module runs, so a null is a caller's bug. */
function notRun(kernelName: string): never {
  throw new Error(`[@lora/core] ${kernelName}: the backend's kernel did not run (registered where the batched matMul module does not?)`);
}

const valueKernel: tf.KernelFunc = ({ inputs, backend }) => simdGeluTanh(backend as tf.KernelBackend, inputs['x']!, null) ?? notRun(GELU_TANH_KERNEL);

const gradientKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const { dy, x } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo };
  return simdGeluTanh(backend as tf.KernelBackend, x, dy) ?? notRun(GELU_TANH_GRAD_KERNEL);
};

/** The kernels by name. */
export const WASM_GELU_KERNELS: Readonly<Record<string, tf.KernelFunc>> = {
  [GELU_TANH_KERNEL]: valueKernel,
  [GELU_TANH_GRAD_KERNEL]: gradientKernel,
};
