import type * as tf from '@tensorflow/tfjs-core';
import { BATCH_MATMUL_WASM_PLAIN, BATCH_MATMUL_WASM_SHARED } from './wasm-batch-matmul-binary.js';

/**
 * A batched matrix product of our own (wasm/batch-matmul.c, 128-bit SIMD, 4×8 register tiles) run
 * in the WASM backend's own memory, for the products XNNPACK serves badly through tfjs: stacks of
 * small matrices (attention's q·kᵀ and p·v, their gradients: tfjs-backend-wasm runs these on a
 * scalar loop, one XNNPACK call per matrix costs more than it computes) and thin products (LoRA's
 * rank-r factors and their gradients, where a transpose and a threaded XNNPACK call cost more than
 * the product). Operands are read in place through strides, so transposed and broadcast operands
 * need no copy. Single-threaded: it does not wait on a second core that another process holds.
 */

/** A WebAssembly.Memory (core's tsconfig has no DOM/WebAssembly types): only its buffer is read. */
interface LinearMemory {
  readonly buffer: ArrayBufferLike;
}

/** The parts of the global WebAssembly API used here. */
interface WebAssemblyApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => { exports: Record<string, unknown> };
  instantiate(bytes: Uint8Array, imports: Record<string, Record<string, unknown>>): Promise<{ instance: { exports: Record<string, unknown> } }>;
}

/** The BackendWasm members used here (public on the class; `wasm` is its Emscripten module). */
interface WasmBackendWithModule extends tf.KernelBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): tf.backend_util.TypedArray;
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
  wasm?: { wasmMemory?: LinearMemory; asm?: { memory?: LinearMemory } };
}

type BatchMatMulExport = (
  batch: number,
  m: number,
  k: number,
  n: number,
  a: number,
  aBatchStride: number,
  aRowStride: number,
  aColumnStride: number,
  b: number,
  bBatchStride: number,
  bRowStride: number,
  bColumnStride: number,
  c: number,
  scratch: number,
) => void;

/** The instance per backend, or null where it cannot run (no SIMD, memory not reachable). */
const instances = new WeakMap<tf.KernelBackend, BatchMatMulExport | null>();

function decode(base64: string): Uint8Array {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** What instantiating the kernel's module for `backend` needs, or null where it cannot run. */
function moduleFor(backend: WasmBackendWithModule): { api: WebAssemblyApi; bytes: Uint8Array; imports: Record<string, Record<string, unknown>> } | null {
  // tfjs's threaded build creates its (shared) memory in JS and keeps it as `wasmMemory`; the
  // single-threaded builds export theirs.
  const memory = backend.wasm?.wasmMemory ?? backend.wasm?.asm?.memory;
  if (memory === undefined) return null;
  const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
  const api = (globalThis as { WebAssembly?: WebAssemblyApi }).WebAssembly;
  if (api === undefined) return null;
  return { api, bytes: decode(shared ? BATCH_MATMUL_WASM_SHARED : BATCH_MATMUL_WASM_PLAIN), imports: { env: { memory } } };
}

function instantiate(backend: WasmBackendWithModule): BatchMatMulExport | null {
  const parts = moduleFor(backend);
  if (parts === null) return null;
  try {
    const instance = new parts.api.Instance(new parts.api.Module(parts.bytes), parts.imports);
    return instance.exports['batch_matmul'] as BatchMatMulExport;
  } catch {
    // No WASM SIMD in this engine, a memory the module cannot import, or a browser that refuses a
    // synchronous compile on its main thread (prepareSimdBatchMatMul avoids that): the caller falls back.
    return null;
  }
}

const isWasmBackend = (backend: tf.KernelBackend): backend is WasmBackendWithModule => {
  const candidate = backend as Partial<WasmBackendWithModule>;
  return typeof candidate.makeOutput === 'function' && typeof candidate.typedArrayFromHeap === 'function';
};

/**
 * Compile and instantiate the kernel for `backend` asynchronously (initRuntime does this for the
 * wasm backend). Node compiles it synchronously on first use just as well, but browsers may refuse
 * a synchronous compile on the main thread (Chrome long capped it at 4 KB; this module is ~4.5 KB).
 * @returns Whether the kernel runs on `backend`.
 */
export async function prepareSimdBatchMatMul(backend: tf.KernelBackend): Promise<boolean> {
  if (instances.get(backend)) return true;
  let kernel: BatchMatMulExport | null = null;
  const parts = isWasmBackend(backend) ? moduleFor(backend) : null;
  if (parts !== null) {
    try {
      const { instance } = await parts.api.instantiate(parts.bytes, parts.imports);
      kernel = instance.exports['batch_matmul'] as BatchMatMulExport;
    } catch {
      kernel = null;
    }
  }
  instances.set(backend, kernel);
  return kernel !== null;
}

/** The batched SIMD matMul of `backend`, or null when the backend is not tfjs's WASM one or it cannot run. */
function kernelOf(backend: tf.KernelBackend): BatchMatMulExport | null {
  let kernel = instances.get(backend);
  if (kernel === undefined) {
    kernel = isWasmBackend(backend) ? instantiate(backend) : null;
    instances.set(backend, kernel);
  }
  return kernel;
}

/** Whether {@link simdBatchMatMul} runs on `backend`. */
export function hasSimdBatchMatMul(backend: tf.KernelBackend): boolean {
  return kernelOf(backend) !== null;
}

const sizeOf = (shape: readonly number[]): number => shape.reduce((product, dimension) => product * dimension, 1);

/**
 * `op(a)·op(b)` for float32 operands of rank ≥ 2 whose batch dimensions are equal (after leading
 * 1s) or all 1 (broadcast); the result has the broadcast batch shape. Returns null for what it does
 * not cover (other dtypes, partial broadcasts, a backend without the kernel), which the caller
 * computes another way.
 */
export function simdBatchMatMul(backend: tf.KernelBackend, a: tf.TensorInfo, b: tf.TensorInfo, transposeA: boolean, transposeB: boolean, outBatchShape: readonly number[]): tf.TensorInfo | null {
  const kernel = kernelOf(backend);
  if (kernel === null || a.dtype !== 'float32' || b.dtype !== 'float32') return null;
  const wasm = backend as WasmBackendWithModule;
  const batch = sizeOf(outBatchShape);
  const batchA = sizeOf(a.shape.slice(0, -2));
  const batchB = sizeOf(b.shape.slice(0, -2));
  // A batch of the output's size needs no expansion; one matrix is broadcast by a stride of 0.
  if ((batchA !== 1 && batchA !== batch) || (batchB !== 1 && batchB !== batch)) return null;
  const [aRows, aColumns] = a.shape.slice(-2) as [number, number];
  const [bRows, bColumns] = b.shape.slice(-2) as [number, number];
  const [m, k] = transposeA ? [aColumns, aRows] : [aRows, aColumns];
  const n = transposeB ? bRows : bColumns;
  const out = wasm.makeOutput([...outBatchShape, m, n], 'float32');
  if (batch * m * n === 0) return out;
  const scratch = wasm.makeOutput([Math.ceil(m / 4) * 4 * k + Math.ceil(n / 8) * 8 * k + 32], 'float32');
  try {
    // Byte offsets in the backend's memory, read after every allocation (they do not move).
    const offset = (info: tf.TensorInfo): number => wasm.typedArrayFromHeap(info).byteOffset;
    kernel(
      batch,
      m,
      k,
      n,
      offset(a),
      batchA === 1 ? 0 : aRows * aColumns,
      transposeA ? 1 : aColumns,
      transposeA ? aColumns : 1,
      offset(b),
      batchB === 1 ? 0 : bRows * bColumns,
      transposeB ? 1 : bColumns,
      transposeB ? bColumns : 1,
      offset(out),
      offset(scratch),
    );
  } finally {
    wasm.disposeData(scratch.dataId);
  }
  return out;
}
