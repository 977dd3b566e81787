import type * as tf from '@tensorflow/tfjs-core';
import { KernelReplacements } from './kernel-replacements.js';
import { WASM_COPY_KERNELS, withCopyKernel } from './wasm-copy-kernels.js';
import { registerWasmGeluKernels, unregisterWasmGeluKernels, wasmGeluKernels } from './wasm-gelu.js';
import { fastWasmMatMulKernels, restoreWasmMatMul, useFastWasmMatMul } from './wasm-matmul.js';

/** Stock kernels replaced by {@link useFastWasmKernels} (the matMul ones are kept by wasm-matmul). */
const replacements = new KernelReplacements();

/**
 * Route a WASM backend's kernels through core's faster forms, through tfjs's kernel registry:
 * the matMul fast paths ({@link useFastWasmMatMul}: XNNPACK for transposed and batched products,
 * frozen weights transposed once) and the data-movement kernels that share or block-copy instead
 * of copying value by value (`Identity`, same-dtype `Cast`, `Transpose` keeping the last axis,
 * `GatherV2`, `SplitV`, `Concat`); and registers fused kernels of its own for composite ops
 * (GPT-2's gelu_new and its gradient, used by `@lora/models`). Results are the stock kernels'
 * (products up to float32 summation order; the fused gelu_new within 2e-6 relative). `initRuntime()` does this for `wasm`; `@lora/cuda-backend` for the instances it
 * starts. Idempotent; only backends running tfjs's WASM kernels should be passed.
 *
 * @param backendName tfjs backend name (default `wasm`).
 * @returns The kernel names replaced by this call (empty when already done or not registered).
 * @example
 * useFastWasmKernels(); // initRuntime() does this for the wasm backend
 */
export function useFastWasmKernels(backendName = 'wasm'): string[] {
  const copyKernels = Object.fromEntries(
    Object.entries(WASM_COPY_KERNELS).map(([kernelName, kernel]) => [kernelName, (stock: tf.KernelConfig) => withCopyKernel(kernel, stock.kernelFunc)]),
  );
  return [...useFastWasmMatMul(backendName), ...replacements.replace(backendName, copyKernels), ...registerWasmGeluKernels(backendName)];
}

/**
 * Put back tfjs's own kernels of `backendName` (undoes {@link useFastWasmKernels}).
 * @returns The kernel names restored.
 */
export function restoreWasmKernels(backendName = 'wasm'): string[] {
  return [...restoreWasmMatMul(backendName), ...replacements.restore(backendName), ...unregisterWasmGeluKernels(backendName)];
}

/** The kernels of `backendName` currently replaced by core's (see {@link useFastWasmKernels}). */
export function fastWasmKernels(backendName = 'wasm'): string[] {
  return [...fastWasmMatMulKernels(backendName), ...replacements.names(backendName), ...wasmGeluKernels(backendName)];
}
