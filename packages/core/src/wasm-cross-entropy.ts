import type * as tf from '@tensorflow/tfjs-core';
import { CROSS_ENTROPY_GRAD_KERNEL, CROSS_ENTROPY_KERNEL } from './cross-entropy.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import { heapOffset as offset, type WasmHeapBackend } from './wasm-module.js';

/**
 * The fused cross-entropy kernels of tfjs's WASM backend (wasm/cross-entropy.c: one SIMD pass per
 * row each way). Registered by `useFastWasmKernels` only where the module runs.
 */


const lossKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const wasm = backend as WasmHeapBackend;
  const { logits, labels } = inputs as { logits: tf.TensorInfo; labels: tf.TensorInfo };
  const [rows, classes] = logits.shape as [number, number];
  const out = wasm.makeOutput([rows], 'float32');
  fusedKernels.exports(wasm)!.crossEntropy(rows, classes, offset(wasm, logits), offset(wasm, labels), offset(wasm, out));
  return out;
};

const gradientKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const wasm = backend as WasmHeapBackend;
  const { dy, logits, labels } = inputs as { dy: tf.TensorInfo; logits: tf.TensorInfo; labels: tf.TensorInfo };
  const [rows, classes] = logits.shape as [number, number];
  const out = wasm.makeOutput([rows, classes], 'float32');
  fusedKernels.exports(wasm)!.crossEntropyGrad(rows, classes, offset(wasm, dy), offset(wasm, logits), offset(wasm, labels), offset(wasm, out));
  return out;
};

/** The kernels by name. */
export const WASM_CROSS_ENTROPY_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [CROSS_ENTROPY_KERNEL]: lossKernel, [CROSS_ENTROPY_GRAD_KERNEL]: gradientKernel };
