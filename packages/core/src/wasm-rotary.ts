import type * as tf from '@tensorflow/tfjs-core';
import { ROTARY_KERNEL } from './rotary-embedding.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import { heapOffset as offset, type WasmHeapBackend } from './wasm-module.js';

/**
 * The fused rotary embedding of tfjs's WASM backend (wasm/rotary.c: one SIMD pass; its gradient the
 * same pass with the angles negated). Registered by `useFastWasmKernels` only where the module runs;
 * `rotaryEmbedding` checks the shapes before it calls the kernel.
 */
const rotaryKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as WasmHeapBackend;
  const { x, cos, sin } = inputs as Record<'x' | 'cos' | 'sin', tf.TensorInfo>;
  const [n0, n1, n2, d] = x.shape as [number, number, number, number];
  const [, t1, t2] = cos.shape as [number, number, number, number];
  // Table row strides: an axis of size 1 in the tables is broadcast (stride 0).
  const s2 = t2 === 1 ? 0 : 1;
  const s1 = t1 === 1 ? 0 : t2;
  const out = wasm.makeOutput([...x.shape], 'float32');
  const sign = attrs!['inverse'] === true ? -1 : 1;
  fusedKernels.exports(wasm)!.rotary(n0, n1, n2, d, t1 * t2, s1, s2, offset(wasm, x), offset(wasm, cos), offset(wasm, sin), sign, offset(wasm, out));
  return out;
};

/** The kernel by name. */
export const WASM_ROTARY_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [ROTARY_KERNEL]: rotaryKernel };
