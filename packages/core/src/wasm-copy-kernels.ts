import * as tf from '@tensorflow/tfjs-core';
import { fusedKernels } from './wasm-fused-kernels.js';

/**
 * Data-movement kernels for tfjs's WASM backend, registered through tfjs's kernel registry by
 * {@link useFastWasmKernels}. A training step calls them hundreds of times, and the stock ones
 * move more than they need to:
 * - `Identity` (tf.clone, and the gradient of every Cast) and a `Cast` to the same dtype (the
 *   gradients of Multiply, Sub, Div cast their inputs to float32) copy the tensor; tensors are
 *   immutable, so these share the data instead, as the plain-JS backend and WASM's own `Reshape` do.
 *   (A `Cast` to bool is also done here: the stock one stores −1 as 255 and 0.5 as 0.)
 * - `Transpose` permutations that keep the last axis in place (attention's head split and merge,
 *   [B, T, H, D] ⇄ [B, H, T, D]) move contiguous rows of the last axis instead of single values;
 *   those that swap the last two axes transpose 4×4 blocks in SIMD registers.
 * - `GatherV2` (embedding lookups), `SplitV` (GPT-2's q/k/v split) and `Concat` (its gradient)
 *   copy whole contiguous blocks with `TypedArray.set`.
 * Results are the stock kernels' bit for bit (they only move values); the cases these do not
 * cover (string tensors, batched gathers, other permutations) go to the stock kernel.
 */

/** The BackendWasm methods used here (public on the class, used by its own kernels). */
interface WasmBackend extends tf.KernelBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): tf.backend_util.TypedArray;
  incRef(dataId: tf.DataId): void;
}

/** A replacement kernel that returns null for the cases it leaves to the stock kernel. */
export type PartialKernel = (args: { inputs: tf.NamedTensorInfoMap; backend: WasmBackend; attrs: tf.NamedAttrMap }) => tf.TensorInfo | tf.TensorInfo[] | null;

const sizeOf = (shape: readonly number[]): number => shape.reduce((product, dimension) => product * dimension, 1);

/** The same data under a new tensor: what the plain-JS backend's Identity does. */
function share(backend: WasmBackend, x: tf.TensorInfo, dtype: tf.DataType = x.dtype): tf.TensorInfo {
  backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: [...x.shape], dtype };
}

const identity: PartialKernel = ({ inputs, backend }) => {
  const x = inputs['x']!;
  return x.dtype === 'string' ? null : share(backend, x);
};

const cast: PartialKernel = ({ inputs, backend, attrs }) => {
  const x = inputs['x']!;
  const dtype = attrs['dtype'] as tf.DataType;
  if (x.dtype === 'string') return null;
  if (x.dtype === dtype) return share(backend, x);
  if (dtype !== 'bool') return null;
  // The stock kernel copies the values into bytes (−1 becomes 255, 0.5 becomes 0); a bool is x ≠ 0.
  const out = backend.makeOutput([...x.shape], 'bool');
  const source = backend.typedArrayFromHeap(x);
  const target = backend.typedArrayFromHeap(out);
  for (let i = 0; i < source.length; i++) target[i] = source[i] === 0 ? 0 : 1;
  return out;
};

/** A loop of a block copy: `count` iterations, advancing the source and the target by these many values. */
type BlockLoop = readonly [count: number, sourceStride: number, targetStride: number];

/**
 * Copies between tensors of one backend, as byte moves inside its memory: core's SIMD
 * `copy_blocks` (one call for up to three nested loops of blocks) where its module runs, else
 * `copyWithin` per block (a memmove with no view to create per block).
 */
interface HeapCopier {
  /** Copy `count` values from value `sourceIndex` of `source` to value `targetIndex` of `target`. */
  copy(target: tf.TensorInfo, targetIndex: number, source: tf.TensorInfo, sourceIndex: number, count: number): void;
  /** The same for every block of the nested `loops` (outermost first), each block moved by the loops' strides. */
  blocks(target: tf.TensorInfo, targetIndex: number, source: tf.TensorInfo, sourceIndex: number, count: number, loops: readonly BlockLoop[]): void;
}

/** A {@link HeapCopier} for tensors of `backend`; make it after the outputs are allocated (a growing memory replaces the buffer). */
function heapCopier(backend: WasmBackend, tensors: readonly tf.TensorInfo[]): HeapCopier {
  const views = new Map(tensors.map((info) => [info.dataId, backend.typedArrayFromHeap(info)]));
  const first = views.values().next().value!;
  const heap = new Uint8Array(first.buffer);
  const simd = fusedKernels.exports(backend);
  const copier: HeapCopier = {
    copy(target, targetIndex, source, sourceIndex, count) {
      const targetView = views.get(target.dataId)!;
      const sourceView = views.get(source.dataId)!;
      const bytes = sourceView.BYTES_PER_ELEMENT;
      const from = sourceView.byteOffset + sourceIndex * bytes;
      heap.copyWithin(targetView.byteOffset + targetIndex * bytes, from, from + count * bytes);
    },
    blocks(target, targetIndex, source, sourceIndex, count, loops) {
      if (simd !== null && loops.length <= 3) {
        const bytes = views.get(source.dataId)!.BYTES_PER_ELEMENT;
        const [l0, l1, l2] = [loops[0] ?? [1, 0, 0], loops[1] ?? [1, 0, 0], loops[2] ?? [1, 0, 0]];
        simd.copyBlocks(
          count * bytes,
          views.get(target.dataId)!.byteOffset + targetIndex * bytes,
          views.get(source.dataId)!.byteOffset + sourceIndex * bytes,
          l0[0],
          l0[1] * bytes,
          l0[2] * bytes,
          l1[0],
          l1[1] * bytes,
          l1[2] * bytes,
          l2[0],
          l2[1] * bytes,
          l2[2] * bytes
        );
        return;
      }
      if (loops.length === 0) {
        copier.copy(target, targetIndex, source, sourceIndex, count);
        return;
      }
      const [[n, sourceStride, targetStride], ...inner] = loops as [BlockLoop, ...BlockLoop[]];
      for (let i = 0; i < n; i++) copier.blocks(target, targetIndex + i * targetStride, source, sourceIndex + i * sourceStride, count, inner);
    },
  };
  return copier;
}

const transpose: PartialKernel = ({ inputs, backend, attrs }) => {
  const x = inputs['x']!;
  const perm = attrs['perm'] as number[];
  const rank = x.shape.length;
  if (x.dtype === 'string' || rank < 2) return null;
  if (perm[rank - 1] !== rank - 1) return transposeLastTwo(x, perm, backend);
  const outShape = perm.map((axis) => x.shape[axis]!);
  const width = x.shape[rank - 1]!;
  // Rows of `width` values, walked in the output's order over its leading axes: along output axis
  // a the source moves by the row stride of input axis perm[a], the target by the output's own.
  const inputRowStrides = x.shape.slice(0, -1).map((_, axis) => sizeOf(x.shape.slice(axis + 1, -1)));
  const leading = outShape.slice(0, -1);
  const loops = leading.map((count, axis): BlockLoop => [count, inputRowStrides[perm[axis]!]! * width, sizeOf(leading.slice(axis + 1)) * width]);
  const out = backend.makeOutput(outShape, x.dtype);
  heapCopier(backend, [x, out]).blocks(out, 0, x, 0, width, loops);
  return out;
};

/**
 * A permutation that swaps the last two axes and keeps the others (a weight or an activation
 * transposed for a product: QLoRA's dequantized weights, full fine-tuning's xᵀ·dy), on core's SIMD
 * kernel for 4-byte values; null for the rest (the stock kernel).
 */
function transposeLastTwo(x: tf.TensorInfo, perm: readonly number[], backend: WasmBackend): tf.TensorInfo | null {
  const rank = x.shape.length;
  const swapsLastTwo = perm.every((axis, i) => (i < rank - 2 ? axis === i : axis === (i === rank - 1 ? rank - 2 : rank - 1)));
  const simd = fusedKernels.exports(backend);
  if (!swapsLastTwo || simd === null || !(x.dtype === 'float32' || x.dtype === 'int32')) return null;
  const [rows, cols] = x.shape.slice(-2) as [number, number];
  const out = backend.makeOutput(perm.map((axis) => x.shape[axis]!), x.dtype);
  if (rows * cols > 0) simd.transposeLastTwo(sizeOf(x.shape.slice(0, -2)), rows, cols, backend.typedArrayFromHeap(x).byteOffset, backend.typedArrayFromHeap(out).byteOffset);
  return out;
}

const gather: PartialKernel = ({ inputs, backend, attrs }) => {
  const x = inputs['x']!;
  const indices = inputs['indices']!;
  if (x.dtype === 'string' || ((attrs['batchDims'] as number | undefined) ?? 0) !== 0) return null;
  const axis = tf.util.parseAxisParam(attrs['axis'] as number, x.shape)[0]!;
  const ids = backend.typedArrayFromHeap(indices);
  const dimension = x.shape[axis]!;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i]!;
    // The stock kernel's check and message.
    if (!(id >= 0 && id <= dimension - 1)) throw new Error(`GatherV2: the index value ${id} is not in [0, ${dimension - 1}]`);
  }
  const outer = sizeOf(x.shape.slice(0, axis));
  const width = sizeOf(x.shape.slice(axis + 1));
  const outShape = [...x.shape.slice(0, axis), ...indices.shape, ...x.shape.slice(axis + 1)];
  const out = backend.makeOutput(outShape, x.dtype);
  const heap = heapCopier(backend, [x, out]);
  const idValues = Array.from(backend.typedArrayFromHeap(indices));
  let offset = 0;
  for (let o = 0; o < outer; o++) {
    for (const id of idValues) {
      heap.copy(out, offset, x, (o * dimension + id) * width, width);
      offset += width;
    }
  }
  return out;
};

const splitV: PartialKernel = ({ inputs, backend, attrs }) => {
  const x = inputs['x']!;
  if (x.dtype === 'string') return null;
  const axis = tf.util.parseAxisParam(attrs['axis'] as number, x.shape)[0]!;
  const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, attrs['numOrSizeSplits'] as number | number[], axis);
  const outer = sizeOf(x.shape.slice(0, axis));
  const inner = sizeOf(x.shape.slice(axis + 1));
  const outs = sizes.map((size) =>
    backend.makeOutput(
      x.shape.map((dimension, i) => (i === axis ? size : dimension)),
      x.dtype
    )
  );
  // After every allocation: a growing heap replaces the buffer the copier views.
  const heap = heapCopier(backend, [x, ...outs]);
  const rowWidth = x.shape[axis]! * inner;
  let start = 0;
  outs.forEach((out, i) => {
    const width = sizes[i]! * inner;
    heap.blocks(out, 0, x, start, width, [[outer, rowWidth, width]]);
    start += width;
  });
  return outs;
};

const concat: PartialKernel = ({ inputs, backend, attrs }) => {
  const parts = Object.values(inputs).filter((part): part is tf.TensorInfo => part !== undefined);
  if (parts.length === 0 || parts.some((part) => part.dtype === 'string' || part.dtype === 'complex64' || part.dtype !== parts[0]!.dtype)) return null;
  const axis = tf.util.parseAxisParam(attrs['axis'] as number, parts[0]!.shape)[0]!;
  // The stock kernels' check (the op itself does not make it): parts that differ off the axis would
  // be copied past their ends, silently (a key/value cache fed another batch size did).
  tf.backend_util.assertParamsConsistent(
    parts.map((part) => part.shape),
    axis
  );
  const outShape = tf.backend_util.computeOutShape(
    parts.map((part) => part.shape),
    axis
  );
  const out = backend.makeOutput(outShape, parts[0]!.dtype);
  const heap = heapCopier(backend, [out, ...parts]);
  const outer = sizeOf(outShape.slice(0, axis));
  const outWidth = sizeOf(outShape.slice(axis));
  let start = 0;
  for (const part of parts) {
    const width = sizeOf(part.shape.slice(axis));
    if (width === 0) continue;
    heap.blocks(out, start, part, 0, width, [[outer, width, outWidth]]);
    start += width;
  }
  return out;
};

/** The copy kernels by tfjs kernel name. */
export const WASM_COPY_KERNELS: Readonly<Record<string, PartialKernel>> = {
  Identity: identity,
  Cast: cast,
  Transpose: transpose,
  GatherV2: gather,
  SplitV: splitV,
  Concat: concat,
};

/** `stock` with `kernel` in front: the stock kernel runs when `kernel` declines (returns null). */
export function withStockFallback(kernel: PartialKernel, stock: tf.KernelFunc): tf.KernelFunc {
  return (args) => {
    const backend = args.backend as WasmBackend;
    if (typeof backend.makeOutput !== 'function' || typeof backend.incRef !== 'function') return stock(args);
    return kernel({ inputs: args.inputs, backend, attrs: args.attrs ?? {} }) ?? stock(args);
  };
}
