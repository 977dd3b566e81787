import type * as tf from '@tensorflow/tfjs-core';
import { ALL_FINITE_KERNEL, SUM_OF_SQUARES_KERNEL } from './tensor-reductions.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import type { WasmHeapBackend } from './wasm-module.js';

/**
 * The trainer's whole-tensor reductions on tfjs's WASM backend (wasm/reductions.c: one SIMD pass
 * per input, no thread-pool wake-up). Registered by `useFastWasmKernels` only where the module runs.
 */

const inputsOf = (inputs: tf.NamedTensorInfoMap): tf.TensorInfo[] => Object.values(inputs).filter((info): info is tf.TensorInfo => info !== undefined);

const sumOfSquaresKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const wasm = backend as WasmHeapBackend;
  const simd = fusedKernels.exports(wasm)!;
  // Per tensor in float32 (as tf.sum), across tensors in float64.
  let total = 0;
  for (const info of inputsOf(inputs)) {
    const values = wasm.typedArrayFromHeap(info);
    total += simd.sumOfSquares(values.length, values.byteOffset);
  }
  const out = wasm.makeOutput([], 'float32');
  wasm.typedArrayFromHeap(out)[0] = total;
  return out;
};

const allFiniteKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const wasm = backend as WasmHeapBackend;
  const simd = fusedKernels.exports(wasm)!;
  const finite = inputsOf(inputs).every((info) => {
    const values = wasm.typedArrayFromHeap(info);
    return simd.allFinite(values.length, values.byteOffset) === 1;
  });
  const out = wasm.makeOutput([], 'bool');
  wasm.typedArrayFromHeap(out)[0] = finite ? 1 : 0;
  return out;
};

/** The kernels by name. */
export const WASM_REDUCTION_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [SUM_OF_SQUARES_KERNEL]: sumOfSquaresKernel, [ALL_FINITE_KERNEL]: allFiniteKernel };
