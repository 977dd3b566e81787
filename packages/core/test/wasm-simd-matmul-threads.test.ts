import type * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { nodeThreadHost } from '../src/node-thread-host.js';
import { expectSameValues, expectTensorsClose } from '../src/testing.js';
import { setThreadHost, type HelperThread } from '../src/thread-host.js';
import {
  packsTransposedA,
  setSimdBatchMatMulHelperMode,
  simdBatchMatMul,
  simdBatchMatMulHelper,
  simdCausalAttentionBackward,
  simdCausalAttentionForward,
  simdCausalSelfAttentionBackward,
  simdCausalSelfAttentionForward,
  simdActivation,
  ACTIVATION_FORMS,
  type ActivationForm,
  simdLoraBackward,
  simdLoraForward,
  threadChunking,
  type ProductTriangle,
} from '../src/wasm-simd-matmul.js';

/**
 * The parts of tfjs-backend-wasm's BackendWasm the kernel uses, on a memory of our own: shared
 * (as tfjs's threaded build's) or plain (its single-threaded builds'). tfjs's threaded build itself
 * starts through @lora/cuda-backend, whose tests run these products on it; here the two-thread
 * kernel is checked alone, against the same kernel on one thread and an independent float64 loop.
 */
interface LinearMemory {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  grow(pages: number): number;
}

/** core's tsconfig has no WebAssembly types: the one constructor used here. */
const { Memory } = (globalThis as unknown as { WebAssembly: { Memory: new (descriptor: { initial: number; maximum: number; shared: boolean }) => LinearMemory } }).WebAssembly;

class HeapBackend {
  readonly wasm: { wasmMemory: LinearMemory; _malloc: (bytes: number) => number };
  private next = 64;
  private readonly data = new Map<object, { offset: number; size: number }>();

  constructor(shared: boolean) {
    // Up to 2 GiB: the bump allocator never reuses memory, and the file's cases allocate more than 1 GiB in all.
    const memory = new Memory({ initial: 256, maximum: 32768, shared });
    this.wasm = { wasmMemory: memory, _malloc: (bytes) => this.allocate(bytes) };
  }

  /** A bump allocator: every call gets fresh memory, growing the memory (under a running helper) as needed. */
  private allocate(bytes: number): number {
    const offset = Math.ceil(this.next / 64) * 64;
    this.next = offset + bytes;
    const memory = this.wasm.wasmMemory;
    if (this.next > memory.buffer.byteLength) memory.grow(Math.ceil((this.next - memory.buffer.byteLength) / 65536));
    return offset;
  }

  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo {
    const dataId = {};
    const size = shape.reduce((product, dimension) => product * dimension, 1);
    this.data.set(dataId, { offset: this.allocate(size * 4), size });
    return { dataId, shape, dtype };
  }

  typedArrayFromHeap(info: tf.TensorInfo): Float32Array {
    const { offset, size } = this.data.get(info.dataId)!;
    return new Float32Array(this.wasm.wasmMemory.buffer, offset, size);
  }

  disposeData(dataId: tf.DataId): boolean {
    return this.data.delete(dataId);
  }

  numDataIds(): number {
    return this.data.size;
  }

  dispose(): void {}

  upload(shape: readonly number[], values: Float32Array): tf.TensorInfo {
    const info = this.makeOutput([...shape], 'float32');
    this.typedArrayFromHeap(info).set(values);
    return info;
  }

  /**
   * `op(a)·op(b)` through the kernel; operands and result are freed (the bump allocator never
   * hands their memory out again), and the result's memory is given back for later checks.
   */
  product(a: Operand, b: Operand, transposeA: boolean, transposeB: boolean, batchShape: number[], triangle: ProductTriangle = 'none', bias: Operand | null = null): Float32Array {
    return this.productInPlace(a, b, transposeA, transposeB, batchShape, triangle, bias).slice();
  }

  /**
   * {@link product}, returning a view of the (freed) result's memory; the freed operands are
   * overwritten with NaN, as a reused heap would overwrite them, so that anything still computed
   * from them afterwards is NaN.
   */
  productInPlace(
    a: Operand,
    b: Operand,
    transposeA: boolean,
    transposeB: boolean,
    batchShape: number[],
    triangle: ProductTriangle = 'none',
    bias: Operand | null = null,
  ): Float32Array {
    const left = this.upload(a.shape, a.values);
    const right = this.upload(b.shape, b.values);
    const added = bias === null ? null : this.upload(bias.shape, bias.values);
    const out = simdBatchMatMul(this as unknown as tf.KernelBackend, left, right, transposeA, transposeB, batchShape, triangle, added);
    if (out === null) throw new Error('the kernel declined the product');
    const values = this.typedArrayFromHeap(out);
    const operands = added === null ? [left, right] : [left, right, added];
    for (const operand of operands) this.typedArrayFromHeap(operand).fill(Number.NaN);
    for (const info of [...operands, out]) this.disposeData(info.dataId);
    return values;
  }
}

interface Operand {
  shape: readonly number[];
  values: Float32Array;
}

/**
 * The fused LoRA passes' operands: x [rows, in], A [rank, in], B [out, rank], base and dy [rows,
 * out]; with `weight`, the layer's base weight in that layout and a bias (used instead of base).
 */
interface LoraOperands {
  readonly x: Operand;
  readonly a: Operand;
  readonly b: Operand;
  readonly base: Operand;
  readonly dy: Operand;
  readonly weight?: { readonly w: Operand; readonly inOut: boolean; readonly bias: Operand; readonly adapterInput?: Operand };
}

/** The base weight's layout, and `-dropout` for an adapter input of its own (the base's after dropout). */
type WeightForm = 'in-out' | 'out-in' | 'in-out-dropout' | 'out-in-dropout';

function loraOperands(rows: number, inFeatures: number, rank: number, outFeatures: number, seed: number, weight?: WeightForm): LoraOperands {
  return {
    x: operand([rows, inFeatures], seed),
    a: operand([rank, inFeatures], seed + 1),
    b: operand([outFeatures, rank], seed + 2),
    base: operand([rows, outFeatures], seed + 3),
    dy: operand([rows, outFeatures], seed + 4),
    ...(weight === undefined
      ? {}
      : {
          weight: {
            w: operand(weight.startsWith('in-out') ? [inFeatures, outFeatures] : [outFeatures, inFeatures], seed + 5),
            inOut: weight.startsWith('in-out'),
            bias: operand([outFeatures], seed + 6),
            ...(weight.endsWith('-dropout') ? { adapterInput: operand([rows, inFeatures], seed + 7) } : {}),
          },
        }),
  };
}

/**
 * A LoRA layer's forward and backward passes through the fused kernels on `backend` (the backward
 * from the forward's hs; with the base weight, the whole layer's): views of [y, hs, dx, dA, dB] in
 * the (freed) results' memory, as {@link HeapBackend.productInPlace} returns; the freed operands are
 * overwritten with NaN.
 */
function loraPasses(backend: HeapBackend, operands: LoraOperands, s: number): Float32Array[] {
  const kernelBackend = backend as unknown as tf.KernelBackend;
  const upload = (value: Operand): tf.TensorInfo => backend.upload(value.shape, value.values);
  const [x, a, b, base, dy] = [operands.x, operands.a, operands.b, operands.base, operands.dy].map(upload) as [tf.TensorInfo, tf.TensorInfo, tf.TensorInfo, tf.TensorInfo, tf.TensorInfo];
  const weight = operands.weight === undefined ? undefined : { weight: upload(operands.weight.w), inOut: operands.weight.inOut, bias: upload(operands.weight.bias) };
  const adapterInput = operands.weight?.adapterInput === undefined ? undefined : upload(operands.weight.adapterInput);
  const forward = simdLoraForward(kernelBackend, x, a, b, weight ?? base, s, adapterInput);
  if (forward === null) throw new Error('the kernel declined the forward pass');
  const backward = simdLoraBackward(kernelBackend, dy, x, a, b, forward[1], s, true, weight, adapterInput);
  if (backward === null) throw new Error('the kernel declined the backward pass');
  const infos = [...forward, ...backward];
  const results = infos.map((info) => backend.typedArrayFromHeap(info));
  const operandInfos = [x, a, b, base, dy, ...(weight === undefined ? [] : [weight.weight, weight.bias!]), ...(adapterInput === undefined ? [] : [adapterInput])];
  for (const info of operandInfos) backend.typedArrayFromHeap(info).fill(Number.NaN);
  for (const info of [...operandInfos, ...infos]) backend.disposeData(info.dataId);
  return results;
}

function operand(shape: readonly number[], seed: number): Operand {
  let state = seed * 2654435761;
  const values = new Float32Array(shape.reduce((product, dimension) => product * dimension, 1));
  for (let i = 0; i < values.length; i++) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    values[i] = state / 2 ** 31 - 1;
  }
  return { shape, values };
}

/**
 * The independent reference: float64 sums, element by element, with broadcast batches; for a
 * triangle, zero above the output's diagonal (`lower-output`) or the terms of op(A) outside A's
 * lower triangle left out (`lower-a`).
 */
function reference(a: Operand, b: Operand, transposeA: boolean, transposeB: boolean, batch: number, triangle: ProductTriangle = 'none'): Float64Array {
  const [aRows, aColumns] = a.shape.slice(-2) as [number, number];
  const [bRows, bColumns] = b.shape.slice(-2) as [number, number];
  const [m, k] = transposeA ? [aColumns, aRows] : [aRows, aColumns];
  const n = transposeB ? bRows : bColumns;
  const aMatrices = a.values.length / (aRows * aColumns);
  const bMatrices = b.values.length / (bRows * bColumns);
  const out = new Float64Array(batch * m * n);
  for (let i = 0; i < batch; i++) {
    const aBase = aMatrices === 1 ? 0 : i * aRows * aColumns;
    const bBase = bMatrices === 1 ? 0 : i * bRows * bColumns;
    for (let r = 0; r < m; r++) {
      for (let c = 0; c < n; c++) {
        let sum = 0;
        for (let p = 0; p < k; p++) {
          if ((triangle === 'lower-output' && c > r) || (triangle === 'lower-a' && (transposeA ? p < r : p > r))) continue;
          const x = a.values[aBase + (transposeA ? p * aColumns + r : r * aColumns + p)]!;
          const y = b.values[bBase + (transposeB ? c * bColumns + p : p * bColumns + c)]!;
          sum += x * y;
        }
        out[(i * m + r) * n + c] = sum;
      }
    }
  }
  return out;
}

// [name, A shape, B shape, transposeA, transposeB, output batch shape, triangle]: every product is
// large enough to be shared between the threads; sizes off the 4×8 tile and odd k reach the edge paths.
const PRODUCTS = [
  ['attention scores q·kᵀ', [2, 4, 67, 33], [2, 4, 61, 33], false, true, [2, 4], 'none'],
  ['attention output p·v', [2, 4, 67, 61], [2, 4, 61, 35], false, false, [2, 4], 'none'],
  ['the value gradient pᵀ·dy', [2, 4, 61, 67], [2, 4, 61, 35], true, false, [2, 4], 'none'],
  ['aᵀ·bᵀ over a stack', [3, 45, 70], [3, 50, 45], true, true, [3], 'none'],
  ['one matrix times a stack (broadcast A)', [70, 45], [6, 45, 52], false, false, [6], 'none'],
  ['a stack times one thin matrix (broadcast B, LoRA x·Aᵀ)', [6, 90, 64], [8, 64], false, true, [6], 'none'],
  ['a product with a short k split by columns', [1030, 24], [257, 24], false, true, [], 'none'],
  ['a thin transposed left operand (LoRA dA = dyᵀ·x; B read in place, its partial last panel packed)', [1030, 8], [1030, 259], true, false, [], 'none'],
  ['five rows of a transposed left operand (B read in place)', [1030, 5], [1030, 100], true, false, [], 'none'],
  ['an up-projection with k = 8 split by rows (LoRA u·Bᵀ)', [1030, 8], [259, 8], false, true, [], 'none'],
  ['an up-projection with k = 16 and B not transposed', [517, 16], [16, 300], false, false, [], 'none'],
  ['five rows split by columns (B read in place, its partial last panel packed; the fifth row by a 1×8 tile)', [5, 300], [300, 1030], false, false, [], 'none'],
  ['six rows times a transposed B (packed)', [6, 300], [1030, 300], false, true, [], 'none'],
  ['one narrow column panel split by rows (LoRA x·Aᵀ)', [1030, 260], [8, 260], false, true, [], 'none'],
  ['a transposed left operand copied 16 rows at a time (full fine-tuning xᵀ·dy; a last block of 11 rows, a partial last panel)', [300, 267], [300, 21], true, false, [], 'none'],
  ['a transposed left operand copied in blocks, its columns cut into three groups', [1030, 300], [1030, 300], true, false, [], 'none'],
  ['the small model attention shape', [8, 4, 128, 64], [8, 4, 128, 64], false, true, [8, 4], 'none'],
  ['causal attention scores tril(q·kᵀ) (tiles right of the diagonal skipped; partial tiles and panels)', [2, 4, 67, 33], [2, 4, 67, 33], false, true, [2, 4], 'lower-output'],
  ['causal attention output tril(p)·v (above the diagonal never read)', [2, 4, 67, 67], [2, 4, 67, 35], false, false, [2, 4], 'lower-a'],
  ['the causal value gradient tril(p)ᵀ·dy', [2, 4, 67, 67], [2, 4, 67, 35], true, false, [2, 4], 'lower-a'],
  ['the small model causal scores', [8, 4, 128, 64], [8, 4, 128, 64], false, true, [8, 4], 'lower-output'],
  ['the small model causal output', [8, 4, 128, 128], [8, 4, 128, 64], false, false, [8, 4], 'lower-a'],
  ['the small model causal key gradient tril(dS)ᵀ·q', [8, 4, 128, 128], [8, 4, 128, 64], true, false, [8, 4], 'lower-a'],
] as const;

const shared = new HeapBackend(true);
const plain = new HeapBackend(false);
const sharedBackend = shared as unknown as tf.KernelBackend;

beforeAll(async () => {
  // The first product instantiates the kernel and starts the helper (asynchronously: the caller
  // never waits for it, so this product may run on one thread).
  shared.product(operand([64, 64], 1), operand([64, 64], 2), false, false, []);
  await vi.waitFor(() => expect(simdBatchMatMulHelper(sharedBackend)?.running).toBe(true), { timeout: 10_000 });
});

afterAll(() => {
  shared.dispose();
});

describe('the two-thread batched SIMD matMul', () => {
  it('has a helper thread on a shared memory and none on a plain one', () => {
    expect(simdBatchMatMulHelper(sharedBackend)).toMatchObject({ running: true });
    plain.product(operand([64, 64], 1), operand([64, 64], 2), false, false, []);
    expect(simdBatchMatMulHelper(plain as unknown as tf.KernelBackend)).toBeNull();
  });

  it.each(PRODUCTS)('computes %s as the one-thread kernel does, bit for bit, and as a float64 loop', (_name, aShape, bShape, transposeA, transposeB, batchShape, triangle) => {
    const batch = batchShape.reduce((product: number, dimension: number) => product * dimension, 1);
    const a = operand(aShape, 3);
    const b = operand(bShape, 4);
    const [m, k] = transposeA ? [aShape.at(-1)!, aShape.at(-2)!] : [aShape.at(-2)!, aShape.at(-1)!];
    const n = transposeB ? bShape.at(-2)! : bShape.at(-1)!;
    // Large enough to be shared between the two threads.
    expect(threadChunking(batch, m, k, n, triangle === 'none' && packsTransposedA(transposeA, m, k, n), triangle)?.chunks).toBeGreaterThanOrEqual(2);
    const dataIds = shared.numDataIds();
    const ours = shared.product(a, b, transposeA, transposeB, [...batchShape], triangle);
    // The scratch buffer is freed.
    expect(shared.numDataIds()).toBe(dataIds);
    // Each element is the same sum in the same order on either thread.
    expectSameValues(ours, plain.product(a, b, transposeA, transposeB, [...batchShape], triangle));
    // Terms are at most 1 in size: float32 summation of k of them errs by about k·2⁻²⁴ at worst
    // (1e-7·k: 1e-4 for the k = 1030 products, 1e-5 for the others).
    expectTensorsClose(ours, reference(a, b, transposeA, transposeB, batch, triangle), { atol: 1e-5 + 1e-7 * k, rtol: 1e-5 });
  });

  it.each([
    ['rows cut into blocks, columns into groups (each chunk adds its own columns’ bias)', [1030, 260], [260, 300], false, false, []],
    ['a transposed weight, partial last panel', [70, 300], [1030, 300], false, true, []],
    ['fewer than 4 rows (B streamed row by row)', [3, 300], [300, 1030], false, false, []],
    ['a stack times a stack', [2, 4, 67, 33], [2, 4, 61, 33], false, true, [2, 4]],
  ] as const)('adds a bias of n values to every row of %s, on both threads as on one', (_name, aShape, bShape, transposeA, transposeB, batchShape) => {
    const a = operand(aShape, 41);
    const b = operand(bShape, 42);
    const n = transposeB ? bShape.at(-2)! : bShape.at(-1)!;
    const bias = operand([n], 43);
    const ours = shared.product(a, b, transposeA, transposeB, [...batchShape], 'none', bias);
    expectSameValues(ours, plain.product(a, b, transposeA, transposeB, [...batchShape], 'none', bias));
    const batch = batchShape.reduce((product: number, dimension: number) => product * dimension, 1);
    const expected = reference(a, b, transposeA, transposeB, batch).map((value, i) => value + bias.values[i % n]!);
    expectTensorsClose(ours, expected, { atol: 1e-4, rtol: 1e-5 });
  });

  it('has the helper compute chunks', () => {
    const before = simdBatchMatMulHelper(sharedBackend)!.chunks;
    for (let call = 0; call < 20; call++) shared.product(operand([8, 4, 128, 64], call), operand([8, 4, 128, 64], call + 1), false, true, [8, 4]);
    expect(simdBatchMatMulHelper(sharedBackend)!.chunks).toBeGreaterThan(before);
  });

  it('gives the one-thread results over many consecutive calls of different shapes (no chunk runs with another call’s arguments)', () => {
    for (let call = 0; call < 300; call++) {
      const [, aShape, bShape, transposeA, transposeB, batchShape, triangle] = PRODUCTS[call % PRODUCTS.length]!;
      const a = operand(aShape, 100 + call);
      const b = operand(bShape, 200 + call);
      const ours = shared.product(a, b, transposeA, transposeB, [...batchShape], triangle);
      const single = plain.product(a, b, transposeA, transposeB, [...batchShape], triangle);
      expectSameValues(ours, single, `call ${call} (${PRODUCTS[call % PRODUCTS.length]![0]})`);
    }
  });

  it('completes every product on the calling thread when the helper claims nothing', () => {
    setSimdBatchMatMulHelperMode(sharedBackend, 'idle');
    try {
      const before = simdBatchMatMulHelper(sharedBackend)!.chunks;
      for (const [, aShape, bShape, transposeA, transposeB, batchShape, triangle] of PRODUCTS) {
        const a = operand(aShape, 5);
        const b = operand(bShape, 6);
        expectSameValues(shared.product(a, b, transposeA, transposeB, [...batchShape], triangle), plain.product(a, b, transposeA, transposeB, [...batchShape], triangle));
      }
      expect(simdBatchMatMulHelper(sharedBackend)!.chunks).toBe(before);
    } finally {
      setSimdBatchMatMulHelperMode(sharedBackend, 'normal');
    }
  });

  it('takes back the chunks of a helper that stalls mid-chunk, and keeps its late results out of the output', async () => {
    setSimdBatchMatMulHelperMode(sharedBackend, 'stalling');
    const results: { values: Float32Array; expected: Float32Array }[] = [];
    try {
      const before = simdBatchMatMulHelper(sharedBackend)!.chunks;
      for (const [, aShape, bShape, transposeA, transposeB, batchShape, triangle] of PRODUCTS) {
        const a = operand(aShape, 7);
        const b = operand(bShape, 8);
        const values = shared.productInPlace(a, b, transposeA, transposeB, [...batchShape], triangle);
        const expected = plain.product(a, b, transposeA, transposeB, [...batchShape], triangle);
        expectSameValues(values, expected);
        results.push({ values, expected });
      }
      // Each call returned while the helper slept inside a chunk: it finished none.
      expect(simdBatchMatMulHelper(sharedBackend)!.chunks).toBe(before);
      // The helper wakes, computes its chunk from operands overwritten since, and must find it taken
      // back: the (freed) outputs of the calls stay as they were when the calls returned.
      await new Promise((resolve) => setTimeout(resolve, 100));
      for (const { values, expected } of results) expectSameValues(values, expected, 'a finished call’s output');
    } finally {
      setSimdBatchMatMulHelperMode(sharedBackend, 'normal');
    }
  });

  it('takes back a chunk whose helper died copying it, and runs later products on the calling thread alone', async () => {
    // A backend of its own: its helper does not come back.
    const backend = new HeapBackend(true);
    const kernelBackend = backend as unknown as tf.KernelBackend;
    try {
      backend.product(operand([64, 64], 1), operand([64, 64], 2), false, false, []);
      await vi.waitFor(() => expect(simdBatchMatMulHelper(kernelBackend)?.running).toBe(true), { timeout: 10_000 });
      setSimdBatchMatMulHelperMode(kernelBackend, 'dying');
      const [, aShape, bShape, transposeA, transposeB, batchShape, triangle] = PRODUCTS.find(([name]) => name === 'the small model attention shape')!;
      // Until the helper claims a chunk (it may wake after the caller has claimed them all), then on.
      for (let call = 0; call < 50; call++) {
        const a = operand(aShape, 300 + call);
        const b = operand(bShape, 400 + call);
        expectSameValues(backend.product(a, b, transposeA, transposeB, [...batchShape], triangle), plain.product(a, b, transposeA, transposeB, [...batchShape], triangle), `call ${call}`);
        if (call > 5 && simdBatchMatMulHelper(kernelBackend)?.running === false) break;
        // The host reports the failure from the helper's thread: give it a moment.
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      // The helper died (its host set the failure word), and never finished a chunk.
      expect(simdBatchMatMulHelper(kernelBackend)).toMatchObject({ running: false, chunks: 0 });
      const a = operand(aShape, 9);
      const b = operand(bShape, 10);
      expectSameValues(backend.product(a, b, transposeA, transposeB, [...batchShape], triangle), plain.product(a, b, transposeA, transposeB, [...batchShape], triangle), 'after the helper died');
    } finally {
      backend.dispose();
    }
  });

  it('stops the helper loop and ends its thread when the backend is disposed', async () => {
    // The test ends the thread itself once its loop has returned: ending it at once would hide
    // whether helper_stop makes the loop return.
    const started: HelperThread[] = [];
    const ended: HelperThread[] = [];
    setThreadHost({
      ...nodeThreadHost,
      startHelper: (options) => {
        const thread = nodeThreadHost.startHelper(options);
        started.push(thread);
        return { terminate: () => void ended.push(thread) };
      },
    });
    try {
      const backend = new HeapBackend(true);
      const kernelBackend = backend as unknown as tf.KernelBackend;
      backend.product(operand([64, 64], 1), operand([64, 64], 2), false, false, []);
      await vi.waitFor(() => expect(simdBatchMatMulHelper(kernelBackend)?.running).toBe(true), { timeout: 10_000 });
      backend.dispose();
      expect(ended).toEqual(started);
      expect(started).toHaveLength(1);
      await vi.waitFor(() => expect(simdBatchMatMulHelper(kernelBackend)?.running).toBe(false), { timeout: 10_000 });
    } finally {
      for (const thread of started) thread.terminate();
      setThreadHost(nodeThreadHost);
    }
  });
});

/** The passes on one thread (a plain memory), copied: a grown plain memory detaches its old views. */
const oneThread = (operands: LoraOperands, s: number): Float32Array[] => loraPasses(plain, operands, s).map((view) => view.slice());

// [name, rows, in, rank, out, base weight]: each pass large enough to be shared; a partial last
// block of rows, partial panels of 8 columns, rank 16 (two panels) and 5 (a partial one); without
// and with the base layer's product, in either weight layout.
const LORA_LAYERS = [
  ['the small model’s c_attn', 1024, 256, 8, 768, undefined],
  ['a partial last block, partial panels', 1030, 260, 8, 259, undefined],
  ['rank 16', 517, 64, 16, 40, undefined],
  ['rank 5', 260, 96, 5, 300, undefined],
  ['the small model’s c_attn with its [in, out] weight', 1024, 256, 8, 768, 'in-out'],
  ['a partial last block, partial panels, with an [out, in] weight', 1030, 260, 8, 259, 'out-in'],
  ['rank 5 with an [in, out] weight', 262, 96, 5, 300, 'in-out'],
  ['the small model’s attn.c_proj with dropout on the adapter’s input', 1024, 256, 8, 256, 'in-out-dropout'],
  ['a partial last block, partial panels, an [out, in] weight, dropout on the adapter’s input', 1030, 260, 8, 259, 'out-in-dropout'],
] as const;

/** The names of {@link loraPasses}' results. */
const passNames = (weight: WeightForm | undefined): string[] => (weight?.endsWith('-dropout') ? ['y', 'hs', 'dx', 'dxa', 'dA', 'dB'] : ['y', 'hs', 'dx', 'dA', 'dB']);

/**
 * The cases `runCases` computes on two threads (the views of their results) against one thread, with
 * the helper idle (it claims nothing: the calling thread computes every chunk) and then stalling in
 * each chunk it claims (descheduled mid-chunk: the caller takes the chunk back), the same bits
 * either way; and, once the stalled helper has woken and computed its chunks from operands
 * overwritten since, every finished call's (freed) results as they were when it returned.
 */
async function expectHelperIdleOrStallingHarmless(runCases: () => { values: Float32Array[]; expected: Float32Array[]; names: readonly string[] }[]): Promise<void> {
  const finished: { values: Float32Array[]; expected: Float32Array[] }[] = [];
  for (const mode of ['idle', 'stalling'] as const) {
    setSimdBatchMatMulHelperMode(sharedBackend, mode);
    try {
      const before = simdBatchMatMulHelper(sharedBackend)!.chunks;
      for (const { values, expected, names } of runCases()) {
        names.forEach((what, i) => expectSameValues(values[i]!, expected[i]!, `${what} (${mode})`));
        finished.push({ values, expected });
      }
      // Each call returned before the helper finished a chunk.
      expect(simdBatchMatMulHelper(sharedBackend)!.chunks).toBe(before);
    } finally {
      setSimdBatchMatMulHelperMode(sharedBackend, 'normal');
    }
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
  for (const { values, expected } of finished) values.forEach((view, i) => expectSameValues(view, expected[i]!, 'a finished call’s result'));
}

describe('the two-thread fused LoRA passes', () => {
  it.each(LORA_LAYERS)('compute %s as on one thread, bit for bit (dA and dB summed block by block in the same order)', (_name, rows, inFeatures, rank, outFeatures, weight) => {
    const operands = loraOperands(rows, inFeatures, rank, outFeatures, 11, weight);
    const dataIds = shared.numDataIds();
    const ours = loraPasses(shared, operands, 1.5);
    expect(shared.numDataIds()).toBe(dataIds);
    const single = oneThread(operands, 1.5);
    expect(ours).toHaveLength(passNames(weight).length);
    passNames(weight).forEach((what, i) => expectSameValues(ours[i]!, single[i]!, what));
    // Not a trivial agreement: the results are finite and not all zero.
    for (const values of ours) expect(values.every(Number.isFinite) && values.some((value) => value !== 0)).toBe(true);
  });

  it('has the helper compute blocks', () => {
    const before = simdBatchMatMulHelper(sharedBackend)!.chunks;
    for (let call = 0; call < 20; call++) loraPasses(shared, loraOperands(1024, 256, 8, 768, call), 2);
    expect(simdBatchMatMulHelper(sharedBackend)!.chunks).toBeGreaterThan(before);
  });

  it('gives the one-thread results when the helper claims nothing, and when it stalls mid-block (its late results kept out of finished calls)', async () => {
    await expectHelperIdleOrStallingHarmless(() =>
      LORA_LAYERS.map(([, rows, inFeatures, rank, outFeatures, weight]) => {
        const operands = loraOperands(rows, inFeatures, rank, outFeatures, 21, weight);
        return { values: loraPasses(shared, operands, 0.5), expected: oneThread(operands, 0.5), names: passNames(weight) };
      }),
    );
  });
});

/**
 * Causal attention's two passes through the one-kernel forms on `backend` (the backward from the
 * forward's stats), on q, k, v and dO of `shape`: views of [o, stats, dq, dk, dv] in the (freed)
 * results' memory, the freed operands overwritten with NaN (see {@link loraPasses}).
 */
function attentionPasses(backend: HeapBackend, shape: readonly number[], seed: number, scale: number): Float32Array[] {
  const kernelBackend = backend as unknown as tf.KernelBackend;
  const [q, k, v, dout] = [0, 1, 2, 3].map((i) => backend.upload(shape, operand(shape, seed + i).values)) as [tf.TensorInfo, tf.TensorInfo, tf.TensorInfo, tf.TensorInfo];
  const forward = simdCausalAttentionForward(kernelBackend, q, k, v, scale);
  if (forward === null) throw new Error('the kernel declined the forward pass');
  const backward = simdCausalAttentionBackward(kernelBackend, dout, q, k, v, forward[1], scale);
  if (backward === null) throw new Error('the kernel declined the backward pass');
  const infos = [...forward, ...backward];
  const results = infos.map((info) => backend.typedArrayFromHeap(info));
  for (const info of [q, k, v, dout]) backend.typedArrayFromHeap(info).fill(Number.NaN);
  for (const info of [q, k, v, dout, ...infos]) backend.disposeData(info.dataId);
  return results;
}

// [name, [matrices, T, D]]: each call large enough to be shared; T and D off the 4×8 tile and off 4-value rows.
const ATTENTION_SHAPES = [
  ['a quarter of the small model’s attention', [8, 128, 64]],
  ['T and D off the tiles', [6, 37, 20]],
  ['two matrices of T 61', [2, 61, 33]],
  ['eight matrices of T 39 (the softmax’s last group of four rows holds three)', [8, 39, 24]],
] as const;
const ATTENTION_RESULTS = ['o', 'stats', 'dq', 'dk', 'dv'];

describe('the two-thread causal attention', () => {
  it.each(ATTENTION_SHAPES)('computes %s as on one thread, bit for bit', (_name, shape) => {
    const dataIds = shared.numDataIds();
    const ours = attentionPasses(shared, shape, 31, 0.125);
    expect(shared.numDataIds()).toBe(dataIds);
    const single = attentionPasses(plain, shape, 31, 0.125).map((view) => view.slice());
    ATTENTION_RESULTS.forEach((what, i) => expectSameValues(ours[i]!, single[i]!, what));
    for (const values of ours) expect(values.every(Number.isFinite) && values.some((value) => value !== 0)).toBe(true);
  });

  it('has the helper compute matrices', () => {
    const before = simdBatchMatMulHelper(sharedBackend)!.chunks;
    // Few calls: the test backend's bump allocator never reuses memory.
    for (let call = 0; call < 6; call++) attentionPasses(shared, [8, 128, 64], call, 0.125);
    expect(simdBatchMatMulHelper(sharedBackend)!.chunks).toBeGreaterThan(before);
  });

  it('grows the helper’s buffer for longer matrices and shares them, as on one thread, bit for bit', () => {
    // T 740 at D 4 and T 520 at D 8: a matrix's work (and, backward, T 520's) outgrows the first 2 MiB.
    for (const [shape, seed] of [[[4, 740, 4], 51], [[4, 520, 8], 52]] as const) {
      const single = attentionPasses(plain, shape, seed, 0.5).map((view) => view.slice());
      const before = simdBatchMatMulHelper(sharedBackend)!.chunks;
      // A call's few matrices may all be done before a busy machine wakes the helper: a few calls.
      for (let call = 0; call < 8 && simdBatchMatMulHelper(sharedBackend)!.chunks === before; call++) {
        const ours = attentionPasses(shared, shape, seed, 0.5);
        ATTENTION_RESULTS.forEach((what, i) => expectSameValues(ours[i]!, single[i]!, what));
        for (const values of ours) expect(values.every(Number.isFinite) && values.some((value) => value !== 0)).toBe(true);
      }
      const helper = simdBatchMatMulHelper(sharedBackend)!;
      expect(helper.chunks).toBeGreaterThan(before);
      // Room for the helper's work and results on one backward matrix (attention_scratch_floats(4, T, D, 1)).
      const [, t, d] = shape;
      expect(helper.bufferFloats).toBeGreaterThanOrEqual(Math.max(Math.ceil(t / 8) * 8 * d, Math.ceil(d / 8) * 8 * t) + 32 + 2 * ((t + 3) & ~3) ** 2 + 3 * t * d);
    }
  });

  it('runs a matrix past the helper’s largest buffer (32 MiB) on the calling thread alone, as on one thread, bit for bit', () => {
    // T 2,100 at D 4: the forward pass's matrix (4.4 M floats) fits the largest buffer, the backward's (8.8 M) does not.
    const shape = [2, 2100, 4];
    const passes = (backend: HeapBackend): { values: Float32Array[]; helperChunks: number[] } => {
      const kernelBackend = backend as unknown as tf.KernelBackend;
      const [q, k, v, dout] = [0, 1, 2, 3].map((i) => backend.upload(shape, operand(shape, 61 + i).values)) as [tf.TensorInfo, tf.TensorInfo, tf.TensorInfo, tf.TensorInfo];
      const chunks = (): number => simdBatchMatMulHelper(kernelBackend)?.chunks ?? 0;
      const helperChunks = [chunks()];
      const forward = simdCausalAttentionForward(kernelBackend, q, k, v, 0.5)!;
      helperChunks.push(chunks());
      const backward = simdCausalAttentionBackward(kernelBackend, dout, q, k, v, forward[1], 0.5)!;
      helperChunks.push(chunks());
      const values = [...forward, ...backward].map((info) => backend.typedArrayFromHeap(info).slice());
      for (const info of [q, k, v, dout, ...forward, ...backward]) backend.disposeData(info.dataId);
      return { values, helperChunks };
    };
    const ours = passes(shared);
    const [, afterForward, afterBackward] = ours.helperChunks;
    expect(afterBackward).toBe(afterForward);
    expect(simdBatchMatMulHelper(sharedBackend)!.bufferFloats).toBe(2 ** 23);
    const single = passes(plain);
    ATTENTION_RESULTS.forEach((what, i) => expectSameValues(ours.values[i]!, single.values[i]!, what));
  });

  it('gives the one-thread results when the helper claims nothing, and when it stalls mid-matrix (its late results kept out of finished calls)', async () => {
    await expectHelperIdleOrStallingHarmless(() =>
      ATTENTION_SHAPES.map(([, shape]) => ({
        values: attentionPasses(shared, shape, 41, 0.5),
        expected: attentionPasses(plain, shape, 41, 0.5).map((view) => view.slice()),
        names: ATTENTION_RESULTS,
      })),
    );
  });
});

/** A fused activation (gelu_new unless `form` says) of `size` values and its gradient on `backend`: views of [y, dx] in the (freed) results' memory, the freed operands overwritten with NaN. */
function activationPasses(backend: HeapBackend, size: number, seed: number, form: ActivationForm = 'gelu-tanh'): Float32Array[] {
  const kernelBackend = backend as unknown as tf.KernelBackend;
  // Values of a few units, as an MLP's activations: both tails of the gate are reached.
  const x = backend.upload([size], operand([size], seed).values.map((value) => 6 * value));
  const dy = backend.upload([size], operand([size], seed + 1).values);
  const results = [simdActivation(kernelBackend, x, null, form), simdActivation(kernelBackend, x, dy, form)];
  if (results.some((result) => result === null)) throw new Error(`the kernel declined ${form}`);
  const views = results.map((info) => backend.typedArrayFromHeap(info!));
  for (const info of [x, dy]) backend.typedArrayFromHeap(info).fill(Number.NaN);
  for (const info of [x, dy, ...results]) backend.disposeData(info!.dataId);
  return views;
}

// Sizes: a quarter of the small model's MLP activation ([8, 128, 1024]) and two off whole chunks and
// vectors (the test backend's bump allocator never reuses memory: sizes are kept small).
const GELU_SIZES = [2 * 128 * 1024, 100_003, 16_387];

describe('the two-thread fused activations', () => {
  it.each(GELU_SIZES)('computes %i values of gelu_new and their gradient as on one thread, bit for bit', (size) => {
    const dataIds = shared.numDataIds();
    const ours = activationPasses(shared, size, 51);
    expect(shared.numDataIds()).toBe(dataIds);
    const single = activationPasses(plain, size, 51).map((view) => view.slice());
    ['y', 'dx'].forEach((what, i) => expectSameValues(ours[i]!, single[i]!, what));
    for (const values of ours) expect(values.every(Number.isFinite) && values.some((value) => value !== 0)).toBe(true);
  });

  it('computes each form as its own one-thread export does (the form reaches the helper), each form giving other values', () => {
    const size = GELU_SIZES[1]!;
    const byForm = ACTIVATION_FORMS.map((form) => {
      const ours = activationPasses(shared, size, 53, form);
      const single = activationPasses(plain, size, 53, form).map((view) => view.slice());
      ['y', 'dx'].forEach((what, i) => expectSameValues(ours[i]!, single[i]!, `${form} ${what}`));
      return single;
    });
    for (let i = 1; i < byForm.length; i++) expect(byForm[i]![0]!.some((value, j) => value !== byForm[0]![0]![j])).toBe(true);
  });

  it('has the helper compute ranges of values', () => {
    const before = simdBatchMatMulHelper(sharedBackend)!.chunks;
    for (let call = 0; call < 4; call++) activationPasses(shared, 2 * 128 * 1024, call);
    expect(simdBatchMatMulHelper(sharedBackend)!.chunks).toBeGreaterThan(before);
  });

  it('gives the one-thread results when the helper claims nothing, and when it stalls mid-range (its late results kept out of finished calls)', async () => {
    await expectHelperIdleOrStallingHarmless(() =>
      GELU_SIZES.map((size) => ({ values: activationPasses(shared, size, 61), expected: activationPasses(plain, size, 61).map((view) => view.slice()), names: ['y', 'dx'] })),
    );
  });
});

/** Causal attention on a fused projection qkv [B, T, 3·H·D] on `backend`: views of [o, stats, d(qkv)], the freed operands overwritten with NaN. */
function selfAttentionPasses(backend: HeapBackend, batch: number, rows: number, heads: number, depth: number, seed: number): Float32Array[] {
  const kernelBackend = backend as unknown as tf.KernelBackend;
  const qkv = backend.upload([batch, rows, 3 * heads * depth], operand([batch, rows, 3 * heads * depth], seed).values);
  const dout = backend.upload([batch, rows, heads * depth], operand([batch, rows, heads * depth], seed + 1).values);
  const forward = simdCausalSelfAttentionForward(kernelBackend, qkv, heads, 0.25);
  if (forward === null) throw new Error('the kernel declined the forward pass');
  const backward = simdCausalSelfAttentionBackward(kernelBackend, dout, qkv, forward[1], heads, 0.25);
  if (backward === null) throw new Error('the kernel declined the backward pass');
  const infos = [...forward, backward];
  const results = infos.map((info) => backend.typedArrayFromHeap(info));
  for (const info of [qkv, dout]) backend.typedArrayFromHeap(info).fill(Number.NaN);
  for (const info of [qkv, dout, ...infos]) backend.disposeData(info.dataId);
  return results;
}

describe('the two-thread causal attention on a fused projection', () => {
  it.each([
    [2, 128, 4, 64],
    [3, 37, 2, 20],
  ])('computes B %i, T %i, %i heads of D %i as on one thread, bit for bit (each matrix’s rows where its head lies)', (batch, rows, heads, depth) => {
    const ours = selfAttentionPasses(shared, batch, rows, heads, depth, 81);
    const single = selfAttentionPasses(plain, batch, rows, heads, depth, 81).map((view) => view.slice());
    ['o', 'stats', 'd(qkv)'].forEach((what, i) => expectSameValues(ours[i]!, single[i]!, what));
    for (const values of ours) expect(values.every(Number.isFinite) && values.some((value) => value !== 0)).toBe(true);
  });
});

describe('threadChunking', () => {
  it('keeps small products and those of fewer than 4 rows on one thread, cuts large ones into at most 64 chunks of whole tiles, and those with k ≤ 16 by rows only', () => {
    expect(threadChunking(1, 16, 16, 16)).toBeNull();
    expect(threadChunking(70_000, 8, 64, 8)).toBeNull();
    // Decoding: a row per sequence, fewer than 4, stays on the calling thread.
    expect(threadChunking(1, 3, 1024, 1024)).toBeNull();
    expect(threadChunking(1, 4, 1024, 1024)?.chunks).toBeGreaterThanOrEqual(2);
    // LoRA's up-projection u·Bᵀ (k = r = 8): mostly stores, so each chunk is whole rows of C.
    expect(threadChunking(1, 1024, 8, 768)).toEqual({ rowBlock: 16, panelGroup: 96, chunks: 64 });
    expect(threadChunking(1, 1024, 16, 768)?.panelGroup).toBe(96);
    expect(threadChunking(1, 1024, 17, 768)?.panelGroup).toBeLessThan(96);
    // Attention: 32 matrices of 128×128×64, two chunks each (half the columns).
    expect(threadChunking(32, 128, 64, 128)).toEqual({ rowBlock: 128, panelGroup: 8, chunks: 64 });
    // One column panel: split by rows, in blocks of 4.
    const thin = threadChunking(1, 1030, 260, 8)!;
    expect(thin.rowBlock % 4).toBe(0);
    expect(thin.chunks).toBeGreaterThan(8);
    expect(thin.chunks).toBeLessThanOrEqual(64);
  });

  it('cuts a product whose transposed A is copied by rows, in whole 16-row copies, with as few column groups as fit the helper', () => {
    // Full fine-tuning's xᵀ·dy for the MLP's first layer: [1024,1024]ᵀ·[1024,256].
    expect(packsTransposedA(true, 1024, 1024, 256)).toBe(true);
    expect(threadChunking(1, 1024, 1024, 256, true)).toEqual({ rowBlock: 48, panelGroup: 14, chunks: 66 });
    // Not copied: not transposed, rows closer than 256 floats (attention), k < 64, one panel (LoRA's dB).
    expect(packsTransposedA(false, 1024, 1024, 256)).toBe(false);
    expect(packsTransposedA(true, 128, 128, 64)).toBe(false);
    expect(packsTransposedA(true, 1024, 63, 256)).toBe(false);
    expect(packsTransposedA(true, 768, 1024, 8)).toBe(false);
  });

  it('cuts a triangular product into blocks of whole rows, two a matrix', () => {
    // Causal attention's scores: all 16 panels in each chunk, rows 0-63 and 64-127.
    expect(threadChunking(32, 128, 64, 128, false, 'lower-output')).toEqual({ rowBlock: 64, panelGroup: 16, chunks: 64 });
    expect(threadChunking(32, 128, 128, 64, false, 'lower-a')).toEqual({ rowBlock: 64, panelGroup: 8, chunks: 64 });
  });

  it('cuts a product whose chunks would overflow the helper’s buffer into smaller ones, not leaving it to one thread', () => {
    // A chunk of whole columns' groups and every row: 4096 rows × 64 columns of result alone fill the buffer.
    const large = threadChunking(1, 4096, 1024, 4096)!;
    expect(large).not.toBeNull();
    expect(large.panelGroup * 8 * 1024 + 32 + large.rowBlock * large.panelGroup * 8).toBeLessThanOrEqual(2 ** 18);
    expect(large.rowBlock % 4).toBe(0);
    // A k so long that one panel's packed values take more than half the buffer.
    const longK = threadChunking(1, 64, 20_000, 64)!;
    expect(longK.panelGroup).toBe(1);
    expect(8 * 20_000 + 32 + longK.rowBlock * 8).toBeLessThanOrEqual(2 ** 18);
  });

  it('computes such a product on both threads as on one, bit for bit', () => {
    const [m, k, n] = [8200, 17, 1024];
    const chunking = threadChunking(1, m, k, n)!;
    expect(chunking.rowBlock).toBeLessThan(m);
    const a = operand([m, k], 31);
    const b = operand([k, n], 32);
    const before = simdBatchMatMulHelper(sharedBackend)!.chunks;
    const ours = shared.product(a, b, false, false, []);
    expectSameValues(ours, plain.product(a, b, false, false, []));
    expect(simdBatchMatMulHelper(sharedBackend)!.chunks).toBeGreaterThan(before);
    // And a sample of its values as float64 sums.
    for (let sample = 0; sample < 200; sample++) {
      const [r, c] = [(sample * 7919) % m, (sample * 104_729) % n];
      let sum = 0;
      for (let p = 0; p < k; p++) sum += a.values[r * k + p]! * b.values[p * n + c]!;
      expect(Math.abs(ours[r * n + c]! - sum)).toBeLessThanOrEqual(1e-5);
    }
  });
});
