import type * as tf from '@tensorflow/tfjs-core';
import { ADAMW_UPDATE_KERNEL } from './adamw-update.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import { heapOffset, type WasmHeapBackend } from './wasm-module.js';

/**
 * The fused AdamW update of tfjs's WASM backend (wasm/adamw.c: one SIMD pass writing the new
 * parameter and moments). Registered by `useFastWasmKernels` only where the module runs.
 */
const updateKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as WasmHeapBackend;
  const { param, gradient, m, v } = inputs as Record<'param' | 'gradient' | 'm' | 'v', tf.TensorInfo>;
  const { beta1, beta2, epsilon, stepSize, sqrtCorrection2, decay, applyDecay } = attrs as unknown as {
    beta1: number;
    beta2: number;
    epsilon: number;
    stepSize: number;
    sqrtCorrection2: number;
    decay: number;
    applyDecay: boolean;
  };
  const outputs = [param, m, v].map((info) => wasm.makeOutput([...info.shape], 'float32'));
  const [newParam, newM, newV] = outputs as [tf.TensorInfo, tf.TensorInfo, tf.TensorInfo];
  // 1 − β in float64 then float32, as the composite form's scalar operands.
  fusedKernels
    .exports(wasm)!
    .adamw(
      wasm.typedArrayFromHeap(param).length,
      heapOffset(wasm, param),
      heapOffset(wasm, gradient),
      heapOffset(wasm, m),
      heapOffset(wasm, v),
      beta1,
      1 - beta1,
      beta2,
      1 - beta2,
      decay,
      applyDecay ? 1 : 0,
      sqrtCorrection2,
      epsilon,
      stepSize,
      heapOffset(wasm, newParam),
      heapOffset(wasm, newM),
      heapOffset(wasm, newV)
    );
  return outputs;
};

/** The kernels by name. */
export const WASM_ADAMW_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [ADAMW_UPDATE_KERNEL]: updateKernel };
