import * as tf from '@tensorflow/tfjs-core';
import { WASM_COPY_KERNELS, withCopyKernel } from './wasm-copy-kernels.js';
import { fastWasmMatMulKernels, restoreWasmMatMul, useFastWasmMatMul } from './wasm-matmul.js';

/** Stock kernels replaced by {@link useFastWasmKernels}, by backend and kernel name. */
const replaced = new Map<string, Map<string, tf.KernelConfig>>();

/**
 * Route a WASM backend's kernels through core's faster forms, through tfjs's kernel registry:
 * the matMul fast paths ({@link useFastWasmMatMul}: XNNPACK for transposed and batched products,
 * frozen weights transposed once) and the data-movement kernels that share or block-copy instead
 * of copying value by value (`Identity`, same-dtype `Cast`, `Transpose` keeping the last axis,
 * `GatherV2`, `SplitV`, `Concat`). Results are the stock kernels' (products up to float32
 * summation order). `initRuntime()` does this for `wasm`; `@lora/cuda-backend` for the instances it
 * starts. Idempotent; only backends running tfjs's WASM kernels should be passed.
 *
 * @param backendName tfjs backend name (default `wasm`).
 * @returns The kernel names replaced by this call (empty when already done or not registered).
 * @example
 * useFastWasmKernels(); // initRuntime() does this for the wasm backend
 */
export function useFastWasmKernels(backendName = 'wasm'): string[] {
  const changed = useFastWasmMatMul(backendName);
  const done = replaced.get(backendName) ?? new Map<string, tf.KernelConfig>();
  for (const [kernelName, kernel] of Object.entries(WASM_COPY_KERNELS)) {
    if (done.has(kernelName)) continue;
    const stock = tf.getKernel(kernelName, backendName);
    if (stock === undefined) continue;
    tf.unregisterKernel(kernelName, backendName);
    tf.registerKernel({ ...stock, kernelFunc: withCopyKernel(kernel, stock.kernelFunc) });
    done.set(kernelName, stock);
    changed.push(kernelName);
  }
  replaced.set(backendName, done);
  return changed;
}

/**
 * Put back tfjs's own kernels of `backendName` (undoes {@link useFastWasmKernels}).
 * @returns The kernel names restored.
 */
export function restoreWasmKernels(backendName = 'wasm'): string[] {
  const restored = restoreWasmMatMul(backendName);
  for (const [kernelName, stock] of replaced.get(backendName) ?? []) {
    tf.unregisterKernel(kernelName, backendName);
    tf.registerKernel(stock);
    restored.push(kernelName);
  }
  replaced.delete(backendName);
  return restored;
}

/** The kernels of `backendName` currently replaced by core's (see {@link useFastWasmKernels}). */
export function fastWasmKernels(backendName = 'wasm'): string[] {
  return [...fastWasmMatMulKernels(backendName), ...(replaced.get(backendName)?.keys() ?? [])];
}
