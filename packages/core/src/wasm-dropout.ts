import type * as tf from '@tensorflow/tfjs-core';
import { DROPOUT_KERNEL, type DropoutAttrs } from './dropout.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import { heapOffset, type WasmHeapBackend } from './wasm-module.js';

/**
 * The fused dropout of tfjs's WASM backend (wasm/dropout.c: one SIMD pass hashing (seed, index)
 * into the mask and multiplying). Registered by `useFastWasmKernels` only where the module runs.
 */
const dropoutKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as WasmHeapBackend;
  const x = inputs['x']!;
  const { seed, threshold, scale } = attrs as unknown as DropoutAttrs;
  const out = wasm.makeOutput([...x.shape], 'float32');
  fusedKernels.exports(wasm)!.dropout(wasm.typedArrayFromHeap(x).length, heapOffset(wasm, x), seed, threshold, scale, heapOffset(wasm, out));
  return out;
};

/** The kernels by name. */
export const WASM_DROPOUT_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [DROPOUT_KERNEL]: dropoutKernel };
