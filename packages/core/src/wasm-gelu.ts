import type * as tf from '@tensorflow/tfjs-core';
import { GELU_TANH_GRAD_KERNEL, GELU_TANH_KERNEL } from './gelu-tanh.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import type { WasmHeapBackend } from './wasm-module.js';

/**
 * The fused gelu_new kernels of tfjs's WASM backend (wasm/gelu-tanh.c: one SIMD pass each for the
 * value and the gradient). Registered by `useFastWasmKernels` only where the module runs.
 */

const valueKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const wasm = backend as WasmHeapBackend;
  const x = inputs['x']!;
  const out = wasm.makeOutput([...x.shape], 'float32');
  const input = wasm.typedArrayFromHeap(x);
  fusedKernels.exports(wasm)!.geluTanh(input.length, input.byteOffset, wasm.typedArrayFromHeap(out).byteOffset);
  return out;
};

const gradientKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const wasm = backend as WasmHeapBackend;
  const { dy, x } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo };
  const out = wasm.makeOutput([...x.shape], 'float32');
  const input = wasm.typedArrayFromHeap(x);
  fusedKernels.exports(wasm)!.geluTanhGrad(input.length, wasm.typedArrayFromHeap(dy).byteOffset, input.byteOffset, wasm.typedArrayFromHeap(out).byteOffset);
  return out;
};

/** The kernels by name. */
export const WASM_GELU_KERNELS: Readonly<Record<string, tf.KernelFunc>> = {
  [GELU_TANH_KERNEL]: valueKernel,
  [GELU_TANH_GRAD_KERNEL]: gradientKernel,
};
