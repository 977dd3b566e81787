import type * as tf from '@tensorflow/tfjs-core';
import { LOW_RANK_ADD_KERNEL } from './low-rank-add.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import { heapOffset, type WasmHeapBackend } from './wasm-module.js';

/** The one-call LoRA output of tfjs's WASM backend (wasm/low-rank.c). Registered by `useFastWasmKernels` only where the module runs. */
const lowRankAddKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as WasmHeapBackend & { disposeData(dataId: tf.DataId): boolean };
  const { x, a, b, base } = inputs as Record<'x' | 'a' | 'b' | 'base', tf.TensorInfo>;
  const [rank, inFeatures] = a.shape as [number, number];
  const outFeatures = b.shape[0]!;
  const out = wasm.makeOutput([...base.shape], 'float32');
  const scratch = wasm.makeOutput([Math.max(rank, 1)], 'float32');
  try {
    const rows = wasm.typedArrayFromHeap(x).length / inFeatures;
    fusedKernels
      .exports(wasm)!
      .lowRankAdd(rows, inFeatures, rank, outFeatures, heapOffset(wasm, x), heapOffset(wasm, a), heapOffset(wasm, b), heapOffset(wasm, base), attrs!['scaling'] as number, heapOffset(wasm, scratch), heapOffset(wasm, out));
  } finally {
    wasm.disposeData(scratch.dataId);
  }
  return out;
};

/** The kernels by name. */
export const WASM_LOW_RANK_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [LOW_RANK_ADD_KERNEL]: lowRankAddKernel };
