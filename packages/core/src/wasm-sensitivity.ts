import type * as tf from '@tensorflow/tfjs-core';
import { SENSITIVITY_UPDATE_KERNEL } from './sensitivity-update.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import { heapOffset, type WasmHeapBackend } from './wasm-module.js';

/**
 * The fused sensitivity update of tfjs's WASM backend (wasm/sensitivity.c: one SIMD pass writing the
 * new sensitivity and uncertainty). Registered by `useFastWasmKernels` only where the module runs.
 */
const updateKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as WasmHeapBackend;
  const { param, gradient, sensitivity, uncertainty } = inputs as Record<'param' | 'gradient' | 'sensitivity' | 'uncertainty', tf.TensorInfo>;
  const { beta1, beta2 } = attrs as unknown as { beta1: number; beta2: number };
  const outputs = [sensitivity, uncertainty].map((info) => wasm.makeOutput([...info.shape], 'float32'));
  const [smoothed, deviation] = outputs as [tf.TensorInfo, tf.TensorInfo];
  // 1 − β in float64 then float32, as the composite form's scalar operands.
  fusedKernels
    .exports(wasm)!
    .sensitivityUpdate(
      wasm.typedArrayFromHeap(param).length,
      heapOffset(wasm, param),
      heapOffset(wasm, gradient),
      heapOffset(wasm, sensitivity),
      heapOffset(wasm, uncertainty),
      beta1,
      1 - beta1,
      beta2,
      1 - beta2,
      heapOffset(wasm, smoothed),
      heapOffset(wasm, deviation),
    );
  return outputs;
};

/** The kernels by name. */
export const WASM_SENSITIVITY_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [SENSITIVITY_UPDATE_KERNEL]: updateKernel };
