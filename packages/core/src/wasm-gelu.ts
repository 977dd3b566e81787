import * as tf from '@tensorflow/tfjs-core';
import { GELU_TANH_GRAD_KERNEL, GELU_TANH_KERNEL } from './gelu-tanh.js';
import { GELU_TANH_WASM_PLAIN, GELU_TANH_WASM_SHARED } from './wasm-gelu-binary.js';
import { BackendWasmModule, isWasmBackend, type WasmHeapBackend } from './wasm-module.js';

/**
 * The fused gelu_new kernels of tfjs's WASM backend (wasm/gelu-tanh.c: one SIMD pass each for the
 * value and the gradient), registered under new kernel names by {@link registerWasmGeluKernels}.
 * Where the module cannot run (no WASM SIMD), the same formulas run as a JS loop over the
 * backend's memory, so a registered kernel always works.
 */

const geluModule = new BackendWasmModule({ plain: GELU_TANH_WASM_PLAIN, shared: GELU_TANH_WASM_SHARED }, (exports) => ({
  value: exports['gelu_tanh'] as (size: number, x: number, y: number) => void,
  gradient: exports['gelu_tanh_grad'] as (size: number, dy: number, x: number, dx: number) => void,
}));

/** Instantiate the module for `backend` asynchronously (see {@link BackendWasmModule.prepare}). */
export const prepareWasmGelu = (backend: tf.KernelBackend): Promise<boolean> => geluModule.prepare(backend);

const K = 2 * Math.sqrt(2 / Math.PI);
const A = 0.044715;
const gateOf = (x: number): number => 1 / (1 + Math.exp(-K * x * (1 + A * x * x)));

function heapBackend(backend: unknown): WasmHeapBackend {
  if (!isWasmBackend(backend as tf.KernelBackend)) throw new Error(`[@lora/core] The fused gelu_new kernels run on tfjs's WASM backend only.`);
  return backend as WasmHeapBackend;
}

const valueKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const x = inputs['x']!;
  const wasm = heapBackend(backend);
  const out = wasm.makeOutput([...x.shape], 'float32');
  const input = wasm.typedArrayFromHeap(x);
  const output = wasm.typedArrayFromHeap(out);
  const simd = geluModule.exports(wasm);
  if (simd !== null) simd.value(input.length, input.byteOffset, output.byteOffset);
  else for (let i = 0; i < input.length; i++) output[i] = input[i]! * gateOf(input[i]!);
  return out;
};

const gradientKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const { dy, x } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo };
  const wasm = heapBackend(backend);
  const out = wasm.makeOutput([...x.shape], 'float32');
  const input = wasm.typedArrayFromHeap(x);
  const upstream = wasm.typedArrayFromHeap(dy);
  const output = wasm.typedArrayFromHeap(out);
  const simd = geluModule.exports(wasm);
  if (simd !== null) {
    simd.gradient(input.length, upstream.byteOffset, input.byteOffset, output.byteOffset);
  } else {
    for (let i = 0; i < input.length; i++) {
      const value = input[i]!;
      const gate = gateOf(value);
      output[i] = upstream[i]! * (gate + value * gate * (1 - gate) * K * (1 + 3 * A * value * value));
    }
  }
  return out;
};

const KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [GELU_TANH_KERNEL]: valueKernel, [GELU_TANH_GRAD_KERNEL]: gradientKernel };

/**
 * Register the fused gelu_new kernels for `backendName` (a backend running tfjs's WASM kernels).
 * @returns The kernel names registered by this call (none when already registered).
 */
export function registerWasmGeluKernels(backendName: string): string[] {
  const registered: string[] = [];
  for (const [kernelName, kernelFunc] of Object.entries(KERNELS)) {
    if (tf.getKernel(kernelName, backendName) !== undefined) continue;
    tf.registerKernel({ kernelName, backendName, kernelFunc });
    registered.push(kernelName);
  }
  return registered;
}

/** Unregister the kernels of {@link registerWasmGeluKernels}. @returns The kernel names unregistered. */
export function unregisterWasmGeluKernels(backendName: string): string[] {
  return Object.keys(KERNELS).filter((kernelName) => {
    if (tf.getKernel(kernelName, backendName) === undefined) return false;
    tf.unregisterKernel(kernelName, backendName);
    return true;
  });
}

/** The fused gelu_new kernels registered for `backendName`. */
export function wasmGeluKernels(backendName: string): string[] {
  return Object.keys(KERNELS).filter((kernelName) => tf.getKernel(kernelName, backendName) !== undefined);
}
