import type * as tf from '@tensorflow/tfjs-core';
import type { DropoutAttrs } from './dropout.js';
import { threadHost } from './thread-host.js';
import { BATCH_MATMUL_WASM_FMA_SHARED, BATCH_MATMUL_WASM_SHARED } from './wasm-batch-matmul-binary.js';
import { decodeBase64, isWasmBackend, withPlainMemoryImport, type WasmHeapBackend } from './wasm-module.js';

/**
 * A batched matrix product of our own (wasm/batch-matmul.c, 128-bit SIMD, 4×8 register tiles) run
 * in the WASM backend's own memory, for the products XNNPACK serves badly through tfjs: stacks of
 * small matrices (attention's q·kᵀ and p·v, their gradients: tfjs-backend-wasm runs these on a
 * scalar loop, one XNNPACK call per matrix costs more than it computes) and thin products (LoRA's
 * rank-r factors and their gradients, where a transpose and a threaded XNNPACK call cost more than
 * the product); and, where it has as many threads as XNNPACK, every other float32 product (it is
 * the faster of the two there: see wasm-matmul.ts), with a fused bias; and causal attention's
 * triangular forms ({@link ProductTriangle}). Operands are read in place through strides, so
 * transposed and broadcast operands need no copy.
 *
 * On tfjs's threaded build (a shared memory) and where a thread host is installed (Node's entries
 * of @lora/core install one on worker_threads; see thread-host.ts), products run on two threads:
 * the calling thread and one helper thread that instantiates the same module on the same memory
 * split the product into chunks claimed through an atomic counter. The caller never waits for the
 * helper: not to start, and not to finish a chunk; once no chunk is left to claim, it takes back
 * the chunks the helper has not finished (the helper computes into a buffer of its own and copies
 * its result out only if its chunk was not taken back). A helper that another process keeps off
 * the second core, even one descheduled mid-chunk, costs the caller no more than computing alone.
 * Elsewhere (the single-threaded builds, a browser, small products) the caller computes alone.
 */

/** A WebAssembly.Memory (core's tsconfig has no DOM/WebAssembly types): only its buffer is read. */
interface LinearMemory {
  readonly buffer: ArrayBufferLike;
}

/** The parts of the global WebAssembly API used here. */
interface WebAssemblyApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => { exports: Record<string, unknown> };
  instantiate(bytes: Uint8Array, imports: Record<string, Record<string, unknown>>): Promise<{ module: object; instance: { exports: Record<string, unknown> } }>;
  validate(bytes: Uint8Array): boolean;
}

/** The BackendWasm members used here (public on the class; `wasm` is its Emscripten module). */
interface WasmBackendWithModule extends WasmHeapBackend {
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
  wasm?: { wasmMemory?: LinearMemory; asm?: { memory?: LinearMemory }; _malloc?: (bytes: number) => number; tfjs?: { getThreadsCount?: () => number } };
}

/** Operand addresses and strides: batch, rows, k, n, then A, B (address and batch, row, column strides) and C. */
type Operands = [number, number, number, number, number, number, number, number, number, number, number, number, number];

type BatchMatMulExport = (...args: [...Operands, scratch: number, triangle: number, bias: number]) => void;

type BatchMatMulThreadedExport = (control: number, ...args: [...Operands, scratch: number, rowBlock: number, panelGroup: number, mayWait: number, triangle: number, bias: number]) => void;

/** The fused LoRA passes' exports (wasm/low-rank-train.h): rows, in, out, rank, row block, s, then addresses; the base weight's address (0 for none) and layout last. */
type LoraForwardExport = (
  rows: number,
  inFeatures: number,
  outFeatures: number,
  rank: number,
  rowBlock: number,
  s: number,
  x: number,
  a: number,
  b: number,
  base: number,
  hs: number,
  y: number,
  scratch: number,
  w: number,
  wInOut: number,
  bias: number,
  xa: number,
) => void;
type LoraBackwardExport = (
  rows: number,
  inFeatures: number,
  outFeatures: number,
  rank: number,
  rowBlock: number,
  s: number,
  dy: number,
  x: number,
  a: number,
  b: number,
  hs: number,
  dx: number,
  parts: number,
  da: number,
  db: number,
  scratch: number,
  w: number,
  wInOut: number,
  xa: number,
  dxa: number,
) => void;
/**
 * Causal attention's exports (wasm/causal-attention.h): matrices, their layout (heads, T, D, row
 * strides), scale, the dropout on the probabilities (seed, threshold, scale; threshold 0: none), the
 * address of each sequence's length (int32; 0: no padding), causal (1) or bidirectional (0), then addresses.
 */
type AttentionLayoutArgs = [
  matrices: number,
  heads: number,
  t: number,
  d: number,
  ldIn: number,
  ldOut: number,
  scale: number,
  seed: number,
  threshold: number,
  dropScale: number,
  lengths: number,
  causal: number,
];
type AttentionForwardExport = (...args: [...AttentionLayoutArgs, q: number, k: number, v: number, o: number, stats: number, scratch: number]) => void;
type AttentionBackwardExport = (...args: [...AttentionLayoutArgs, dout: number, q: number, k: number, v: number, stats: number, dq: number, dk: number, dv: number, scratch: number]) => void;
/** A fused activation's exports (wasm/gelu-tanh.h, gelu-erf.h, silu.h, linked into this module): size, then addresses. */
type ActivationExport = (size: number, x: number, y: number) => void;
type ActivationGradExport = (size: number, dy: number, x: number, dx: number) => void;
type ActivationThreadedExport = (control: number, backward: number, size: number, x: number, dy: number, out: number, chunk: number, mayWait: number, form: number) => void;
type WithControl<F extends (...args: never[]) => void> = (control: number, ...args: [...Parameters<F>, mayWait: number]) => void;

/** The two-thread kernel of one backend: its control block (in the backend's memory) and helper. */
interface ThreadedKernel {
  readonly run: BatchMatMulThreadedExport;
  readonly loraForward: WithControl<LoraForwardExport>;
  readonly loraBackward: WithControl<LoraBackwardExport>;
  readonly attentionForward: WithControl<AttentionForwardExport>;
  readonly attentionBackward: WithControl<AttentionBackwardExport>;
  readonly activation: ActivationThreadedExport;
  readonly memory: LinearMemory;
  /** Byte address of the control block (`struct control` in batch-matmul.c). */
  readonly control: number;
  readonly mayBlock: boolean;
  /**
   * Whether the helper's buffer holds `floats`, grown to hold them where they are at most
   * MAX_HELPER_SCRATCH_FLOATS (false otherwise: the caller computes alone).
   */
  readonly growHelperBuffer: (floats: number) => boolean;
  /** Floats in the helper's buffer now. */
  readonly helperFloats: () => number;
}

interface SimdKernel {
  readonly build: SimdKernelBuild;
  readonly run: BatchMatMulExport;
  readonly loraForward: LoraForwardExport;
  readonly loraBackward: LoraBackwardExport;
  /** Floats of scratch a thread needs for a fused LoRA pass (1 forward, 2 backward); `fused` 1 with the base weight, `helper` 1 for the helper's buffer. */
  readonly loraScratchFloats: (kind: number, inFeatures: number, outFeatures: number, rank: number, rowBlock: number, fused: number, helper: number) => number;
  readonly attentionForward: AttentionForwardExport;
  readonly attentionBackward: AttentionBackwardExport;
  /** Floats of scratch a thread needs for causal attention (3 forward, 4 backward) on T×D matrices; `helper` 1 for the helper's buffer. */
  readonly attentionScratchFloats: (kind: number, t: number, d: number, helper: number) => number;
  /** Each fused activation's value and gradient on the calling thread, by form. */
  readonly activations: Readonly<Record<ActivationForm, readonly [ActivationExport, ActivationGradExport]>>;
  /** Null where products run on the calling thread only. */
  readonly threads: ThreadedKernel | null;
}

// The control block (`struct control` in wasm/batch-matmul.c, which asserts these byte offsets),
// then one word per chunk, then the helper's own buffer.
const CONTROL_BYTES = 576;
const MAX_THREADED_CHUNKS = 4096;
/**
 * Floats in the helper's buffer (2 MiB): a chunk's packed panels of B and its result must fit, and
 * a LoRA layer's whole packed weight with 64 rows' results (the `small` model's c_attn, [256, 768];
 * at 1 MiB it ran 32-row blocks, which measured no faster than its base product and LoRA pass apart).
 */
const HELPER_SCRATCH_FLOATS = 2 ** 19;
/**
 * Floats the helper's buffer may grow to for causal attention's longer matrices (32 MiB: T up to
 * about 2,000 at D = 64 on both threads), in powers of two as they come; longer ones run on the
 * calling thread. The buffers it outgrows are never freed (see control_helper_scratch).
 */
const MAX_HELPER_SCRATCH_FLOATS = 2 ** 23;
/**
 * Products size their chunks as for a 1 MiB buffer (what they were tuned and measured with): the
 * larger buffer is for the LoRA layers' packed weights and longer attention matrices.
 */
const PRODUCT_CHUNK_FLOATS = 2 ** 18;
const TEST_MODE_OFFSET = 12;
const HELPER_CHUNKS_OFFSET = 68;
const HELPER_RUNNING_OFFSET = 72;
const HELPER_FAILED_OFFSET = 76;

/** The instance per backend, or null where it cannot run (no SIMD, memory not reachable). */
const instances = new WeakMap<tf.KernelBackend, SimdKernel | null>();

/** What instantiating the kernel's module for `backend` needs, or null where it cannot run. */
function moduleFor(
  backend: WasmBackendWithModule,
): { api: WebAssemblyApi; bytes: Uint8Array; build: SimdKernelBuild; memory: LinearMemory; imports: Record<string, Record<string, unknown>> } | null {
  // tfjs's threaded build creates its (shared) memory in JS and keeps it as `wasmMemory`; the
  // single-threaded builds export theirs.
  const memory = backend.wasm?.wasmMemory ?? backend.wasm?.asm?.memory;
  if (memory === undefined) return null;
  const api = (globalThis as { WebAssembly?: WebAssemblyApi }).WebAssembly;
  if (api === undefined) return null;
  return { api, ...kernelBinary(api, isShared(memory)), memory, imports: { env: { memory } } };
}

/** Which build of the kernel's module runs: with fused multiply-adds (relaxed SIMD), or without. */
export type SimdKernelBuild = 'fma' | 'plain';

/**
 * The kernel's module for a shared or a plain memory: the build with fused multiply-adds where the
 * engine accepts relaxed SIMD (Chrome and Edge 114+, Node 22+, and Node 20-21 with the flag that
 * core's Node entry sets) and `LORA_WASM_FMA` is not `0` in Node's environment, else the plain one.
 * The package carries shared-memory links only; a plain memory gets one with its import rewritten.
 */
function kernelBinary(api: WebAssemblyApi, sharedMemory: boolean): { bytes: Uint8Array; build: SimdKernelBuild } {
  const forMemory = (shared: Uint8Array): Uint8Array => (sharedMemory ? shared : withPlainMemoryImport(shared));
  if (fmaBuildWanted()) {
    const bytes = forMemory(decodeBase64(BATCH_MATMUL_WASM_FMA_SHARED));
    if (api.validate(bytes)) return { bytes, build: 'fma' };
  }
  return { bytes: forMemory(decodeBase64(BATCH_MATMUL_WASM_SHARED)), build: 'plain' };
}

/** False where Node's environment has `LORA_WASM_FMA=0` (a switch for comparisons and for the plain build's tests). */
export function fmaBuildWanted(): boolean {
  return (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.['LORA_WASM_FMA'] !== '0';
}

const isShared = (memory: LinearMemory): boolean => typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;

/** The kernel of an instantiated module, with its helper thread started where one can run. */
function kernelFrom(backend: WasmBackendWithModule, module: object, exports: Record<string, unknown>, memory: LinearMemory, build: SimdKernelBuild): SimdKernel {
  return {
    build,
    run: exports['batch_matmul'] as BatchMatMulExport,
    loraForward: exports['lora_forward'] as LoraForwardExport,
    loraBackward: exports['lora_backward'] as LoraBackwardExport,
    loraScratchFloats: exports['lora_scratch_floats'] as SimdKernel['loraScratchFloats'],
    attentionForward: exports['attention_forward'] as AttentionForwardExport,
    attentionBackward: exports['attention_backward'] as AttentionBackwardExport,
    attentionScratchFloats: exports['attention_scratch_floats'] as SimdKernel['attentionScratchFloats'],
    activations: {
      'gelu-tanh': [exports['gelu_tanh'] as ActivationExport, exports['gelu_tanh_grad'] as ActivationGradExport],
      'gelu-erf': [exports['gelu_erf'] as ActivationExport, exports['gelu_erf_grad'] as ActivationGradExport],
      silu: [exports['silu'] as ActivationExport, exports['silu_grad'] as ActivationGradExport],
    },
    threads: startThreads(backend, module, exports, memory),
  };
}

/**
 * Start the helper thread of a shared-memory instance: a control block allocated on the backend's
 * heap (never freed: it lives as long as the backend) and a thread from the installed host, stopped
 * when the backend is disposed. Null where the kernel stays on the calling thread.
 */
function startThreads(backend: WasmBackendWithModule, module: object, exports: Record<string, unknown>, memory: LinearMemory): ThreadedKernel | null {
  const host = threadHost();
  const malloc = backend.wasm?._malloc;
  const run = exports['batch_matmul_threaded'] as BatchMatMulThreadedExport | undefined;
  const init = exports['control_init'] as ((control: number, helperScratch: number) => void) | undefined;
  const stop = exports['helper_stop'] as ((control: number) => void) | undefined;
  const setHelperScratch = exports['control_helper_scratch'] as ((control: number, helperScratch: number) => void) | undefined;
  if (host === null || !isShared(memory) || malloc === undefined || run === undefined || init === undefined || stop === undefined || setHelperScratch === undefined) return null;
  // Aligned to a cache line (64 bytes), so the words the helper writes sit on lines of their own.
  const chunkWordBytes = 4 * MAX_THREADED_CHUNKS;
  const control = (((malloc(CONTROL_BYTES + chunkWordBytes + 4 * HELPER_SCRATCH_FLOATS + 64) >>> 0) + 63) & ~63) >>> 0;
  init(control, control + CONTROL_BYTES + chunkWordBytes);
  try {
    const helper = host.startHelper({ module, memory, control, failedOffset: control + HELPER_FAILED_OFFSET });
    const dispose = backend.dispose.bind(backend);
    backend.dispose = () => {
      stop(control);
      helper.terminate();
      dispose();
    };
  } catch {
    // No thread could start (a sandbox without workers): the caller computes alone.
    return null;
  }
  let helperFloats = HELPER_SCRATCH_FLOATS;
  const growHelperBuffer = (floats: number): boolean => {
    if (floats <= helperFloats) return true;
    if (floats > MAX_HELPER_SCRATCH_FLOATS) return false;
    const grown = Math.min(MAX_HELPER_SCRATCH_FLOATS, 2 ** Math.ceil(Math.log2(floats)));
    const address = malloc(4 * grown + 64) >>> 0;
    if (address === 0) return false;
    setHelperScratch(control, ((address + 63) & ~63) >>> 0);
    helperFloats = grown;
    return true;
  };
  return {
    growHelperBuffer,
    helperFloats: () => helperFloats,
    run,
    loraForward: exports['lora_forward_threaded'] as ThreadedKernel['loraForward'],
    loraBackward: exports['lora_backward_threaded'] as ThreadedKernel['loraBackward'],
    attentionForward: exports['attention_forward_threaded'] as ThreadedKernel['attentionForward'],
    attentionBackward: exports['attention_backward_threaded'] as ThreadedKernel['attentionBackward'],
    activation: exports['activation_threaded'] as ActivationThreadedExport,
    memory,
    control,
    mayBlock: host.mayBlock,
  };
}

function instantiate(backend: WasmBackendWithModule): SimdKernel | null {
  const parts = moduleFor(backend);
  if (parts === null) return null;
  try {
    const module = new parts.api.Module(parts.bytes);
    const instance = new parts.api.Instance(module, parts.imports);
    return kernelFrom(backend, module, instance.exports, parts.memory, parts.build);
  } catch {
    // No WASM SIMD in this engine, a memory the module cannot import, or a browser that refuses a
    // synchronous compile on its main thread (prepareSimdBatchMatMul avoids that): the caller falls back.
    return null;
  }
}

const isWasmBackendWithModule = (backend: tf.KernelBackend): backend is WasmBackendWithModule => isWasmBackend(backend);

/**
 * Compile and instantiate the kernel for `backend` asynchronously (initRuntime does this for the
 * wasm backend), and start its helper thread where it has one. Node compiles it synchronously on
 * first use just as well, but browsers may refuse a synchronous compile on the main thread (Chrome
 * long capped it at 4 KB; this module is ~4.5 KB).
 * @returns Whether the kernel runs on `backend`.
 */
export async function prepareSimdBatchMatMul(backend: tf.KernelBackend): Promise<boolean> {
  if (instances.get(backend)) return true;
  let kernel: SimdKernel | null = null;
  const parts = isWasmBackendWithModule(backend) ? moduleFor(backend) : null;
  if (parts !== null) {
    try {
      const { module, instance } = await parts.api.instantiate(parts.bytes, parts.imports);
      kernel = kernelFrom(backend as WasmBackendWithModule, module, instance.exports, parts.memory, parts.build);
    } catch {
      kernel = null;
    }
  }
  instances.set(backend, kernel);
  return kernel !== null;
}

/** The batched SIMD matMul of `backend`, or null when the backend is not tfjs's WASM one or it cannot run. */
function kernelOf(backend: tf.KernelBackend): SimdKernel | null {
  let kernel = instances.get(backend);
  if (kernel === undefined) {
    kernel = isWasmBackendWithModule(backend) ? instantiate(backend) : null;
    instances.set(backend, kernel);
  }
  return kernel;
}

/** Which build of core's kernel module runs on `backend` (see {@link SimdKernelBuild}), or null where none does. */
export function simdKernelBuild(backend: tf.KernelBackend): SimdKernelBuild | null {
  return kernelOf(backend)?.build ?? null;
}

/** Whether {@link simdBatchMatMul} runs on `backend`. */
export function hasSimdBatchMatMul(backend: tf.KernelBackend): boolean {
  return kernelOf(backend) !== null;
}

/**
 * Whether the kernel of `backend` runs a product on at least as many threads as tfjs's XNNPACK
 * would: two (its helper thread serving) or one, against the threads of tfjs's pool (one on its
 * single-threaded builds). Where XNNPACK has more (a browser's threaded build, a machine given more
 * threads), large products are better left to it.
 */
export function simdBatchMatMulAsParallel(backend: tf.KernelBackend): boolean {
  const kernel = kernelOf(backend);
  if (kernel === null) return false;
  const ours = kernel.threads !== null && helperServes(kernel.threads) ? 2 : 1;
  const theirs = (backend as WasmBackendWithModule).wasm?.tfjs?.getThreadsCount?.() ?? 1;
  return ours >= theirs;
}

/** The control block's 32-bit words (a fresh view: a grown shared memory has a new buffer). */
const controlWords = (threads: ThreadedKernel): Int32Array => new Int32Array(threads.memory.buffer, threads.control, CONTROL_BYTES / 4);

/** Whether the helper thread is taking chunks: started, and its loop neither returned nor failed. */
function helperServes(threads: ThreadedKernel): boolean {
  const words = controlWords(threads);
  return Atomics.load(words, HELPER_RUNNING_OFFSET / 4) === 1 && Atomics.load(words, HELPER_FAILED_OFFSET / 4) === 0;
}

/**
 * The helper thread of `backend`'s batched SIMD matMul, for tests and benchmarks: whether its loop
 * runs, how many chunks it has computed so far, and the floats in its buffer (grown for causal
 * attention's longer matrices). Null where products run on the calling thread only
 * (single-threaded WASM builds, no thread host, not a WASM backend).
 */
export function simdBatchMatMulHelper(backend: tf.KernelBackend): { running: boolean; chunks: number; bufferFloats: number } | null {
  const threads = kernelOf(backend)?.threads ?? null;
  if (threads === null) return null;
  return { running: helperServes(threads), chunks: Atomics.load(controlWords(threads), HELPER_CHUNKS_OFFSET / 4) >>> 0, bufferFloats: threads.helperFloats() };
}

/** How the helper thread behaves, for tests: see {@link setSimdBatchMatMulHelperMode}. */
export type SimdBatchMatMulHelperMode = 'normal' | 'idle' | 'stalling' | 'dying';

const HELPER_MODES: Record<SimdBatchMatMulHelperMode, number> = { normal: 0, idle: 1, stalling: 2, dying: 3 };

/**
 * A test switch for the helper thread of `backend`: `idle`, it claims no chunk, so the calling
 * thread computes every chunk alone (as when another process holds the second core); `stalling`, it
 * sleeps inside each chunk it claims (as when it is descheduled mid-chunk) until the caller has taken
 * the chunk back and 20 ms more, then computes it, and its late result must be dropped; `dying`, it
 * traps while copying a chunk's result to the output (its host then reports the failure, the caller
 * takes the chunk back, and later products run on the calling thread alone); `normal` (the
 * default). No effect where there is no helper.
 */
export function setSimdBatchMatMulHelperMode(backend: tf.KernelBackend, mode: SimdBatchMatMulHelperMode): void {
  const threads = kernelOf(backend)?.threads ?? null;
  if (threads !== null) Atomics.store(controlWords(threads), TEST_MODE_OFFSET / 4, HELPER_MODES[mode]);
}

/** Products below this many flops run on the calling thread alone (waking the helper costs ~10-50 µs). */
const MIN_THREADED_FLOPS = 2 ** 19;
/**
 * Products with at most this many terms per output (LoRA's up-projections, k = r) are cut by rows
 * only: the kernel writes their output row by row (batch-matmul.c's SMALL_K), and a chunk of whole
 * rows keeps each of its cache lines to one thread.
 */
const SMALL_K = 16;
/**
 * Products of fewer rows (token-by-token decoding) run on the calling thread alone: the kernel
 * streams B, which is the whole of their cost, and the helper, asleep between products, woke too
 * late to take a share (measured: generation 1.27× slower with it).
 */
const STREAMED_ROWS = 4;
/** A chunk holds about this many flops at least: claiming one is an atomic swap on a shared line. */
const CHUNK_FLOPS = 2 ** 17;
/** Chunks per product at most: enough that the caller balances the helper's share when it is slow. */
const TARGET_CHUNKS = 64;
/**
 * Row blocks per matrix of a triangular product (see {@link threadChunking}): fewer chunks ran
 * faster (`bench/products.mjs`, causal attention's forms, alternating: 2 blocks 602-638 µs, 4
 * 651-687, 8 703-768, 16 794-1,060).
 */
const TRIANGLE_ROW_GROUPS = 2;

/**
 * A transposed op(A) whose rows lie at least this many floats apart (its row count m: full
 * fine-tuning's weight gradient xᵀ·dy), with k at least {@link PACK_A_MIN_K}, is copied by
 * the kernel into scratch {@link A_BLOCK_ROWS} rows at a time before its tiles read it (read in
 * place at 4 KB apart, every load of a tile falls in one L1 set). Mirrors batch-matmul.c's
 * PACK_A_MIN_STRIDE, PACK_A_MIN_K, PACK_A_MIN_COLUMNS and A_BLOCK_ROWS.
 */
const PACK_A_MIN_STRIDE = 256;
const PACK_A_MIN_K = 64;
const A_BLOCK_ROWS = 16;
/** With fewer columns (one panel: LoRA's dB), each value of A is used once and is read in place. */
const PACK_A_MIN_COLUMNS = 16;

/** Whether the kernel copies op(A) into scratch (batch-matmul.c's packs_a), for a product `[m, k]·[k, n]`. */
export function packsTransposedA(transposeA: boolean, m: number, k: number, n: number): boolean {
  return transposeA && m >= PACK_A_MIN_STRIDE && k >= PACK_A_MIN_K && n >= PACK_A_MIN_COLUMNS;
}

/**
 * How a product of `batch` matrices `[m, k]·[k, n]` is cut into chunks for two threads: rows per
 * chunk (a multiple of the 4-row tile) and 8-column panels per chunk, each matrix of the stack
 * being one chunk at least. Null when the product is too small to share, has fewer than 4 rows,
 * has more matrices than the chunk words (4096), or a chunk's packed panels and result would not
 * fit the helper's buffer even in the smallest chunks (a row tile of one panel). `packsA` (see {@link packsTransposedA}): each chunk copies its own rows of
 * A, so the columns are cut into as few groups as the helper's buffer allows and the rows into
 * blocks of whole copies. `triangle` (see {@link ProductTriangle}): only a triangle is computed, so
 * the work lies unevenly over rows and columns; each chunk takes every column of a block of rows
 * (a matrix's rows in {@link TRIANGLE_ROW_GROUPS} blocks).
 */
export function threadChunking(
  batch: number,
  m: number,
  k: number,
  n: number,
  packsA = false,
  triangle: ProductTriangle = 'none',
): { rowBlock: number; panelGroup: number; chunks: number } | null {
  const flops = 2 * batch * m * k * n;
  if (flops < MIN_THREADED_FLOPS || m < STREAMED_ROWS || batch > MAX_THREADED_CHUNKS) return null;
  const panels = Math.ceil(n / 8);
  const rowTiles = Math.ceil(m / 4);
  const perMatrix = Math.ceil(Math.min(TARGET_CHUNKS, Math.floor(flops / CHUNK_FLOPS)) / batch);
  const aBlockFloats = packsA ? A_BLOCK_ROWS * k : 0;
  let panelGroup: number;
  let rowBlock: number;
  if (triangle !== 'none') {
    // Whole rows: a column group of a triangle holds a share of its work that differs from group to
    // group (up to 3:1 in halves). Row blocks differ too, but a matrix's few blocks are taken one
    // after the other, the panels packed once per thread and matrix, and more chunks even out what
    // each thread gets.
    panelGroup = panels;
    rowBlock = 4 * Math.ceil(rowTiles / TRIANGLE_ROW_GROUPS);
  } else if (packsA) {
    // Packed panels take at most half of what the helper's buffer has left after the copy of A.
    panelGroup = Math.max(1, Math.min(panels, Math.floor((PRODUCT_CHUNK_FLOATS - 32 - aBlockFloats) / 2 / (8 * k))));
    const blocks = Math.ceil(m / A_BLOCK_ROWS);
    const rowGroups = Math.min(blocks, Math.ceil(perMatrix / Math.ceil(panels / panelGroup)));
    rowBlock = A_BLOCK_ROWS * Math.ceil(blocks / rowGroups);
  } else {
    // Splitting columns first (a chunk packs only its own panels of B), but rows only when k is small.
    const panelGroups = k <= SMALL_K ? 1 : Math.min(panels, perMatrix);
    const rowGroups = Math.min(rowTiles, Math.ceil(perMatrix / panelGroups));
    panelGroup = Math.ceil(panels / panelGroups);
    rowBlock = 4 * Math.ceil(rowTiles / rowGroups);
  }
  // Large products: chunks small enough for the helper's buffer (packed panels in one half, the
  // chunk's result in the other), not a product left to one thread.
  const half = PRODUCT_CHUNK_FLOATS / 2;
  if (!packsA && panelGroup * 8 * k + 32 + aBlockFloats > half) panelGroup = Math.max(1, Math.floor((half - 32 - aBlockFloats) / (8 * k)));
  if (!packsA && rowBlock * panelGroup * 8 > half) rowBlock = Math.max(4, 4 * Math.floor(half / (panelGroup * 8) / 4));
  const chunks = batch * Math.ceil(panels / panelGroup) * Math.ceil(m / rowBlock);
  const helperFloats = panelGroup * 8 * k + 32 + aBlockFloats + rowBlock * panelGroup * 8;
  return chunks < 2 || chunks > MAX_THREADED_CHUNKS || helperFloats > PRODUCT_CHUNK_FLOATS ? null : { rowBlock, panelGroup, chunks };
}

const sizeOf = (shape: readonly number[]): number => shape.reduce((product, dimension) => product * dimension, 1);

/** Byte address of a tensor in the backend's memory (read after every allocation: it does not move). */
const addressOf = (wasm: WasmBackendWithModule, info: tf.TensorInfo): number => wasm.typedArrayFromHeap(info).byteOffset;

/**
 * A triangular form of a product of square attention matrices (query i sees keys ≤ i), computing
 * about half of it: `lower-output`, tril(op(A)·op(B)) (a square result, zero above the diagonal);
 * `lower-a`, op(tril(A))·op(B) (A square; what lies above its diagonal is never read). batch-matmul.c's
 * TRI_LOWER_OUTPUT, and TRI_LOWER_A or (with transposeA) TRI_UPPER_A.
 */
export type ProductTriangle = 'none' | 'lower-output' | 'lower-a';

/** batch-matmul.c's `tri` argument for a triangle and transposeA. */
function triangleCode(triangle: ProductTriangle, transposeA: boolean): number {
  if (triangle === 'none') return 0;
  if (triangle === 'lower-output') return 1;
  return transposeA ? 3 : 2;
}

/**
 * `op(a)·op(b)` for float32 operands of rank ≥ 2 whose batch dimensions are equal (after leading
 * 1s) or all 1 (broadcast); the result has the broadcast batch shape. A `bias` of n float32 values
 * is added to every row (not with a triangle). Returns null for what it does not cover (other
 * dtypes, partial broadcasts, a backend without the kernel), which the caller computes another way.
 */
export function simdBatchMatMul(
  backend: tf.KernelBackend,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  transposeA: boolean,
  transposeB: boolean,
  outBatchShape: readonly number[],
  triangle: ProductTriangle = 'none',
  bias: tf.TensorInfo | null = null,
): tf.TensorInfo | null {
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
  if ((triangle === 'lower-output' && m !== n) || (triangle === 'lower-a' && aRows !== aColumns)) return null;
  if (bias !== null && (triangle !== 'none' || bias.dtype !== 'float32' || sizeOf(bias.shape) !== n)) return null;
  const out = wasm.makeOutput([...outBatchShape, m, n], 'float32');
  if (batch * m * n === 0) return out;
  const threads = kernel.threads !== null && helperServes(kernel.threads) ? kernel.threads : null;
  const tri = triangleCode(triangle, transposeA);
  const packsA = tri === 0 && packsTransposedA(transposeA, m, k, n);
  const chunking = threads === null ? null : threadChunking(batch, m, k, n, packsA, triangle);
  // Packed panels of B: all of them for one thread, a chunk's worth for the calling thread of two
  // (the helper has a buffer of its own); then the copy of A's rows, if any.
  const scratchFloats = (chunking === null ? Math.ceil(n / 8) * 8 * k + 32 : chunking.panelGroup * 8 * k + 32) + (packsA ? A_BLOCK_ROWS * k : 0);
  const scratch = wasm.makeOutput([scratchFloats], 'float32');
  try {
    const offset = (info: tf.TensorInfo): number => addressOf(wasm, info);
    const operands: Operands = [
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
    ];
    if (threads !== null && chunking !== null) {
      threads.run(threads.control, ...operands, offset(scratch), chunking.rowBlock, chunking.panelGroup, threads.mayBlock ? 1 : 0, tri, bias === null ? 0 : offset(bias));
    } else {
      kernel.run(...operands, offset(scratch), tri, bias === null ? 0 : offset(bias));
    }
  } finally {
    wasm.disposeData(scratch.dataId);
  }
  return out;
}

const LORA_KIND = { forward: 1, backward: 2 } as const;

/**
 * Rows per block of the fused LoRA passes, by form and pass: the first size tried, halved while the
 * helper's buffer cannot hold a block, down to the fewest (below which the pass declines).
 * - The adapter's passes alone: 64 forward, 128 backward, down to 4.
 * - With the base weight each block streams the whole packed weight through the cache for its rows'
 *   tiles, so fewer rows make the base product wait on memory (the separate product, chunked by
 *   columns, does not): 64 both ways (128 backward ran slower for the small model's c_attn and
 *   c_proj), down to 32.
 * - Its backward pass with dropout on the adapter's input (blocks also return dxa's rows) down to
 *   64 only: with a 1 MiB helper buffer the small model's c_attn ran 32 rows a block there and
 *   measured slower than its base product and LoRA pass apart (6.1-8.3 against 5.8-8.1 ms; at 64
 *   rows, without dropout, 5.8-6.0 against 6.5-7.1): layers that would need fewer keep the separate form.
 */
const LORA_ROW_BLOCKS: Readonly<Record<LoraPassForm, Readonly<Record<'forward' | 'backward', { readonly first: number; readonly fewest: number }>>>> = {
  adapter: { forward: { first: 64, fewest: 4 }, backward: { first: 128, fewest: 4 } },
  layer: { forward: { first: 64, fewest: 32 }, backward: { first: 64, fewest: 32 } },
  'layer-dropout': { forward: { first: 64, fewest: 32 }, backward: { first: 64, fewest: 64 } },
};

/**
 * Rows per block of a fused LoRA pass over `[rows, inFeatures]` inputs, or null where even the
 * fewest rows' results would not fit the helper's buffer. A function of the shapes only, never of
 * the thread count: the backward pass's dA and dB are sums of per-block parts, so the block size
 * fixes their rounding, and one thread or two give the same bits.
 */
function loraRowBlock(kernel: SimdKernel, pass: 'forward' | 'backward', inFeatures: number, outFeatures: number, rank: number, form: LoraPassForm): number | null {
  const { first, fewest } = LORA_ROW_BLOCKS[form][pass];
  for (let rowBlock = first; rowBlock >= fewest; rowBlock /= 2) {
    if (kernel.loraScratchFloats(LORA_KIND[pass], inFeatures, outFeatures, rank, rowBlock, LORA_FORM_CODE[form], 1) <= HELPER_SCRATCH_FLOATS) return rowBlock;
  }
  return null;
}

/**
 * What a fused LoRA pass computes: the adapter's term alone (`adapter`), the whole layer with its
 * base weight ({@link LoraBaseWeight}; `layer`), or the whole layer whose adapter has an input of
 * its own, the base's input after dropout (`layer-dropout`).
 */
export type LoraPassForm = 'adapter' | 'layer' | 'layer-dropout';
/** The forms as wasm/low-rank-train.h's `fused` argument. */
const LORA_FORM_CODE: Readonly<Record<LoraPassForm, number>> = { adapter: 0, layer: 1, 'layer-dropout': 2 };

/**
 * Whether `backend` runs {@link simdLoraForward} and {@link simdLoraBackward} in `form` for a layer
 * of these sizes (false where a block's results would not fit the helper's buffer: such layers'
 * rank-r products are large enough for the product kernels; with the base weight, false too where
 * its packed panels would not fit beside 32 rows' results).
 */
export function simdLoraPassesFit(backend: tf.KernelBackend, inFeatures: number, outFeatures: number, rank: number, form: LoraPassForm = 'adapter'): boolean {
  const kernel = kernelOf(backend);
  return kernel !== null && (['forward', 'backward'] as const).every((pass) => loraRowBlock(kernel, pass, inFeatures, outFeatures, rank, form) !== null);
}

/**
 * A LoRA layer's frozen base weight and bias, for the fused passes to compute the whole layer:
 * `weight` [in, out] when `inOut` (GPT-2's Conv1D), else [out, in]; `bias` [out] or null.
 */
export interface LoraBaseWeight {
  readonly weight: tf.TensorInfo;
  readonly inOut: boolean;
  readonly bias: tf.TensorInfo | null;
}

/**
 * The two threads (where the helper serves and the pass is large enough to share), or null for the
 * calling thread alone.
 */
function threadsFor(kernel: SimdKernel, flops: number, blocks: number): ThreadedKernel | null {
  const threads = kernel.threads;
  return threads !== null && helperServes(threads) && flops >= MIN_THREADED_FLOPS && blocks >= 2 && blocks <= MAX_THREADED_CHUNKS ? threads : null;
}

/** What both fused LoRA passes start from: the kernel, the layer's sizes and its row block. Null where the pass cannot run. */
function loraSetup(
  backend: tf.KernelBackend,
  pass: 'forward' | 'backward',
  operands: readonly tf.TensorInfo[],
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  base: LoraBaseWeight | undefined,
  adapterInput: tf.TensorInfo | undefined,
) {
  const kernel = kernelOf(backend);
  const weightOperands = base === undefined ? [] : base.bias === null ? [base.weight] : [base.weight, base.bias];
  if (kernel === null || [...operands, ...weightOperands, ...(adapterInput === undefined ? [] : [adapterInput])].some((info) => info.dtype !== 'float32')) return null;
  const [rank, inFeatures] = a.shape as [number, number];
  const outFeatures = b.shape[0]!;
  if (base !== undefined && !sameShape(base.weight.shape, base.inOut ? [inFeatures, outFeatures] : [outFeatures, inFeatures])) return null;
  if (base?.bias != null && !sameShape(base.bias.shape, [outFeatures])) return null;
  const form: LoraPassForm = base === undefined ? 'adapter' : adapterInput === undefined ? 'layer' : 'layer-dropout';
  const rowBlock = loraRowBlock(kernel, pass, inFeatures, outFeatures, rank, form);
  if (rowBlock === null) return null;
  const wasm = backend as WasmBackendWithModule;
  const scratchFloats = kernel.loraScratchFloats(LORA_KIND[pass], inFeatures, outFeatures, rank, rowBlock, LORA_FORM_CODE[form], 0);
  const offset = (info: tf.TensorInfo): number => addressOf(wasm, info);
  // The base weight's address and layout as the exports take them (0, 0: none).
  const weightArgs = [base === undefined ? 0 : offset(base.weight), base?.inOut === true ? 1 : 0] as const;
  return { kernel, wasm, rank, inFeatures, outFeatures, rowBlock, scratchFloats, offset, weightArgs };
}

function sameShape(shape: readonly number[], expected: readonly number[]): boolean {
  return shape.length === expected.length && shape.every((size, axis) => size === expected[axis]);
}

/**
 * A LoRA layer's forward pass in one kernel (wasm/low-rank-train.h): for float32 x [rows, in],
 * A [rank, in], B [out, rank] and base [rows, out], `[y, hs]` with hs = s·(x·Aᵀ) and y = base +
 * hs·Bᵀ; or, given the layer's base weight instead of its output (`base` a {@link LoraBaseWeight}),
 * y = x·op(W) + bias + hs·Bᵀ, the whole layer, where with `adapterInput` (x after dropout, with the
 * base weight only) hs = s·(adapterInput·Aᵀ). Null where the backend has no kernel or the shapes do
 * not fit its buffers.
 */
export function simdLoraForward(
  backend: tf.KernelBackend,
  x: tf.TensorInfo,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  base: tf.TensorInfo | LoraBaseWeight,
  s: number,
  adapterInput?: tf.TensorInfo,
): [tf.TensorInfo, tf.TensorInfo] | null {
  const weight = 'inOut' in base ? base : undefined;
  if (adapterInput !== undefined && (weight === undefined || !sameShape(adapterInput.shape, x.shape))) return null;
  const setup = loraSetup(backend, 'forward', weight === undefined ? [x, a, b, base as tf.TensorInfo] : [x, a, b], a, b, weight, adapterInput);
  if (setup === null) return null;
  const { kernel, wasm, rank, inFeatures, outFeatures, rowBlock, scratchFloats, offset, weightArgs } = setup;
  const rows = x.shape[0]!;
  const y = wasm.makeOutput([rows, outFeatures], 'float32');
  const hs = wasm.makeOutput([rows, rank], 'float32');
  if (rows === 0) return [y, hs];
  const scratch = wasm.makeOutput([scratchFloats], 'float32');
  try {
    const baseOutput = weight === undefined ? offset(base as tf.TensorInfo) : 0;
    const bias = weight?.bias == null ? 0 : offset(weight.bias);
    const args = [rows, inFeatures, outFeatures, rank, rowBlock, s, offset(x), offset(a), offset(b), baseOutput, offset(hs), offset(y), offset(scratch), ...weightArgs, bias, offset(adapterInput ?? x)] as const;
    const baseFlops = weight === undefined ? 0 : 2 * rows * inFeatures * outFeatures;
    const threads = threadsFor(kernel, baseFlops + 2 * rows * rank * (inFeatures + outFeatures), Math.ceil(rows / rowBlock));
    if (threads !== null) threads.loraForward(threads.control, ...args, threads.mayBlock ? 1 : 0);
    else kernel.loraForward(...args);
  } finally {
    wasm.disposeData(scratch.dataId);
  }
  return [y, hs];
}

/**
 * A LoRA layer's backward pass in one kernel (wasm/low-rank-train.h): from dy [rows, out], x, A, B
 * and the forward pass's hs, `[dx, dA, dB]` with g = s·(dy·B), dx = g·A, dA = gᵀ·x, dB = dyᵀ·hs;
 * `[dA, dB]` without `inputGradient`. With the base weight (`base`; its bias unused), dx is the whole
 * layer's, dy·op(W)ᵀ + g·A; with `adapterInput` too (x after dropout, the forward pass's), dA = gᵀ·
 * adapterInput and the result is `[dx, dxa, dA, dB]`: x's part dy·op(W)ᵀ and the adapter input's g·A
 * apart. Null where {@link simdLoraForward} would be.
 */
export function simdLoraBackward(
  backend: tf.KernelBackend,
  dy: tf.TensorInfo,
  x: tf.TensorInfo,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
  hs: tf.TensorInfo,
  s: number,
  inputGradient = true,
  base?: LoraBaseWeight,
  adapterInput?: tf.TensorInfo,
): tf.TensorInfo[] | null {
  if (adapterInput !== undefined && (base === undefined || !sameShape(adapterInput.shape, x.shape))) return null;
  // Without dx the base weight has no part in the pass (nor a separate dxa).
  const weight = inputGradient ? base : undefined;
  const split = weight !== undefined && adapterInput !== undefined;
  const setup = loraSetup(backend, 'backward', [dy, x, a, b, hs], a, b, weight, split ? adapterInput : undefined);
  if (setup === null) return null;
  const { kernel, wasm, rank, inFeatures, outFeatures, rowBlock, scratchFloats, offset, weightArgs } = setup;
  const rows = dy.shape[0]!;
  const dx = inputGradient ? wasm.makeOutput([rows, inFeatures], 'float32') : null;
  const dxa = split ? wasm.makeOutput([rows, inFeatures], 'float32') : null;
  const da = wasm.makeOutput([rank, inFeatures], 'float32');
  const db = wasm.makeOutput([outFeatures, rank], 'float32');
  const gradients = [...(dx === null ? [] : [dx]), ...(dxa === null ? [] : [dxa]), da, db];
  const blocks = Math.ceil(rows / rowBlock);
  if (rows === 0) {
    wasm.typedArrayFromHeap(da).fill(0);
    wasm.typedArrayFromHeap(db).fill(0);
    return gradients;
  }
  const parts = wasm.makeOutput([blocks * rank * (inFeatures + outFeatures)], 'float32');
  const scratch = wasm.makeOutput([scratchFloats], 'float32');
  try {
    const args = [rows, inFeatures, outFeatures, rank, rowBlock, s, offset(dy), offset(x), offset(a), offset(b), offset(hs), dx === null ? 0 : offset(dx), offset(parts), offset(da), offset(db), offset(scratch), ...weightArgs,
      // dA sums over the adapter's own input (x after dropout, where it has one).
      offset(adapterInput ?? x),
      dxa === null ? 0 : offset(dxa),
    ] as const;
    const baseFlops = weight === undefined ? 0 : 2 * rows * inFeatures * outFeatures;
    const threads = threadsFor(kernel, baseFlops + 4 * rows * rank * (inFeatures + outFeatures), blocks);
    if (threads !== null) threads.loraBackward(threads.control, ...args, threads.mayBlock ? 1 : 0);
    else kernel.loraBackward(...args);
  } finally {
    wasm.disposeData(parts.dataId);
    wasm.disposeData(scratch.dataId);
  }
  return gradients;
}

const ATTENTION_KIND = { forward: 3, backward: 4 } as const;

/**
 * Floats of a causal attention call's scratch at most (128 MiB, T up to about 4,000 at D = 64): its
 * [T, T] matrices (P, and dS backward) are the calling thread's, allocated for the call.
 */
const MAX_ATTENTION_SCRATCH_FLOATS = 2 ** 25;

/**
 * Whether `backend` runs {@link simdCausalAttentionForward} and {@link simdCausalAttentionBackward}
 * on T×D matrices: false where a call's scratch would pass MAX_ATTENTION_SCRATCH_FLOATS (sequences
 * of thousands of tokens), which keep the separate causal products.
 */
export function simdCausalAttentionFits(backend: tf.KernelBackend, t: number, d: number): boolean {
  const kernel = kernelOf(backend);
  return kernel !== null && t > 0 && d > 0 && (['forward', 'backward'] as const).every((pass) => kernel.attentionScratchFloats(ATTENTION_KIND[pass], t, d, 0) <= MAX_ATTENTION_SCRATCH_FLOATS);
}

/**
 * Where a causal attention call's matrices lie (wasm/causal-attention.h's attention_offset):
 * `matrices` of T×D, matrix i being head i % heads of sequence i / heads, rows of q, k, v (and their
 * gradients) `ldIn` floats apart and of the output (and its gradient) `ldOut`.
 */
interface AttentionLayout {
  readonly matrices: number;
  readonly heads: number;
  readonly t: number;
  readonly d: number;
  readonly ldIn: number;
  readonly ldOut: number;
}

/**
 * Run one causal attention pass: the kernel, the layout, byte addresses; on both threads where the
 * helper serves and one matrix's work and results fit its buffer, grown for longer matrices up to
 * MAX_HELPER_SCRATCH_FLOATS, else on the calling thread alone, whose scratch is the call's own.
 */
function runAttention(
  kernel: SimdKernel,
  wasm: WasmBackendWithModule,
  pass: 'forward' | 'backward',
  layout: AttentionLayout,
  scale: number,
  dropout: DropoutAttrs | null,
  keyLengths: readonly number[] | null,
  causal: boolean,
  addresses: readonly number[],
): void {
  const { matrices, heads, t, d, ldIn, ldOut } = layout;
  // The seed as the unsigned 32-bit integer it is (a WASM i32 argument takes its bits either way).
  const drop = dropout === null ? [0, 0, 1] : [dropout.seed | 0, dropout.threshold, dropout.scale];
  const scratch = wasm.makeOutput([kernel.attentionScratchFloats(ATTENTION_KIND[pass], t, d, 0)], 'float32');
  const lengths = keyLengths === null ? null : wasm.makeOutput([keyLengths.length], 'int32');
  try {
    if (lengths !== null) (wasm.typedArrayFromHeap(lengths) as Int32Array).set(keyLengths!);
    const lengthsAddress = lengths === null ? 0 : wasm.typedArrayFromHeap(lengths).byteOffset;
    const args = [matrices, heads, t, d, ldIn, ldOut, scale, ...drop, lengthsAddress, causal ? 1 : 0, ...addresses, wasm.typedArrayFromHeap(scratch).byteOffset] as const;
    const shared = threadsFor(kernel, 4 * matrices * t * t * d, matrices);
    const threads = shared !== null && shared.growHelperBuffer(kernel.attentionScratchFloats(ATTENTION_KIND[pass], t, d, 1)) ? shared : null;
    if (pass === 'forward') {
      if (threads !== null) threads.attentionForward(threads.control, ...(args as unknown as Parameters<AttentionForwardExport>), threads.mayBlock ? 1 : 0);
      else kernel.attentionForward(...(args as unknown as Parameters<AttentionForwardExport>));
    } else if (threads !== null) threads.attentionBackward(threads.control, ...(args as unknown as Parameters<AttentionBackwardExport>), threads.mayBlock ? 1 : 0);
    else kernel.attentionBackward(...(args as unknown as Parameters<AttentionBackwardExport>));
  } finally {
    wasm.disposeData(scratch.dataId);
    if (lengths !== null) wasm.disposeData(lengths.dataId);
  }
}

/**
 * Whether `keyLengths` are lengths of right-padded sequences for a layout: null (none), or one
 * integer in [1, T] per sequence of a layout with heads (a stack of [..., T, D] matrices has no sequences).
 */
function fitsLengths(layout: AttentionLayout, keyLengths: readonly number[] | null, headsGiven: boolean): boolean {
  if (keyLengths === null) return true;
  return headsGiven && keyLengths.length * layout.heads === layout.matrices && keyLengths.every((length) => Number.isInteger(length) && length >= 1 && length <= layout.t);
}

const isFloat32Shaped = (info: tf.TensorInfo, shape: readonly number[]): boolean => info.dtype === 'float32' && info.shape.length === shape.length && info.shape.every((size, axis) => size === shape[axis]);

/**
 * Where the matrices of separate q, k, v lie: stacks [..., T, D] (`heads` undefined), or the layers'
 * layout [B, T, heads·D] (each head's D values side by side, as a projection gives them, read in
 * place); null where the shapes are neither or do not fit the kernel's buffers.
 */
function separateLayout(backend: tf.KernelBackend, q: tf.TensorInfo, heads: number | undefined): AttentionLayout | null {
  if (heads === undefined) {
    const [t, d] = q.shape.slice(-2) as [number, number];
    if (q.shape.length < 2 || !simdCausalAttentionFits(backend, t, d)) return null;
    return { matrices: sizeOf(q.shape.slice(0, -2)), heads: 1, t, d, ldIn: d, ldOut: d };
  }
  if (q.shape.length !== 3 || !Number.isInteger(heads) || heads < 1) return null;
  const [batch, t, width] = q.shape as [number, number, number];
  const d = width / heads;
  if (!Number.isInteger(d) || d < 1 || !simdCausalAttentionFits(backend, t, d)) return null;
  return { matrices: batch * heads, heads, t, d, ldIn: width, ldOut: width };
}

/** The stats' shape for q: [..., T, 2] for stacks, [B, heads, T, 2] for the layers' layout. */
const statsShape = (q: tf.TensorInfo, heads: number | undefined): number[] => (heads === undefined ? [...q.shape.slice(0, -1), 2] : [q.shape[0]!, heads, q.shape[1]!, 2]);

/**
 * Causal self-attention's forward pass in one kernel (wasm/causal-attention.h) for float32 q, k, v
 * of one shape, [..., T, D] stacks, or with `heads` the layers' layout [B, T, heads·D] (read and
 * written in place: no head split out or merged back): `[o, stats]`, o = tril(softmax(scale·tril(q·kᵀ)))·v
 * in q's shape and each query row's softmax max and 1/Σ [..., T, 2] (with `heads`, [B, heads, T, 2]),
 * from which the backward pass recomputes the probabilities. With `dropout`, the probabilities are
 * dropped as core's dropout kernel drops a [..., T, T] tensor of them with those attributes before
 * they multiply v. With `keyLengths` (the layers' layout only: one per sequence, in [1, T]), each
 * sequence is right-padded: its keys from its length on are masked for every query (as a padding
 * mask added to the causal one masks them). With `causal` false, attention is bidirectional (an
 * encoder's: every query sees every key of its sequence; full products instead of triangles). Null
 * where the backend has no kernel or the shapes (or lengths) do not fit.
 */
export function simdCausalAttentionForward(
  backend: tf.KernelBackend,
  q: tf.TensorInfo,
  k: tf.TensorInfo,
  v: tf.TensorInfo,
  scale: number,
  heads?: number,
  dropout: DropoutAttrs | null = null,
  keyLengths: readonly number[] | null = null,
  causal = true,
): [tf.TensorInfo, tf.TensorInfo] | null {
  const kernel = kernelOf(backend);
  const layout = [q, k, v].every((info) => isFloat32Shaped(info, q.shape)) ? separateLayout(backend, q, heads) : null;
  if (kernel === null || layout === null || !fitsLengths(layout, keyLengths, heads !== undefined)) return null;
  const wasm = backend as WasmBackendWithModule;
  const o = wasm.makeOutput([...q.shape], 'float32');
  const stats = wasm.makeOutput(statsShape(q, heads), 'float32');
  runAttention(kernel, wasm, 'forward', layout, scale, dropout, keyLengths, causal, [q, k, v, o, stats].map((info) => addressOf(wasm, info)));
  return [o, stats];
}

/**
 * Its backward pass in one kernel: from dO, q, k, v and the forward pass's stats, `[dq, dk, dv]`
 * (the probabilities recomputed, not kept), in the layout of the forward pass, with the forward
 * pass's `dropout`. Null where {@link simdCausalAttentionForward} would be.
 */
export function simdCausalAttentionBackward(
  backend: tf.KernelBackend,
  dout: tf.TensorInfo,
  q: tf.TensorInfo,
  k: tf.TensorInfo,
  v: tf.TensorInfo,
  stats: tf.TensorInfo,
  scale: number,
  heads?: number,
  dropout: DropoutAttrs | null = null,
  keyLengths: readonly number[] | null = null,
  causal = true,
): tf.TensorInfo[] | null {
  const kernel = kernelOf(backend);
  const shaped = [dout, q, k, v].every((info) => isFloat32Shaped(info, q.shape)) && isFloat32Shaped(stats, statsShape(q, heads));
  const layout = shaped ? separateLayout(backend, q, heads) : null;
  if (kernel === null || layout === null || !fitsLengths(layout, keyLengths, heads !== undefined)) return null;
  const wasm = backend as WasmBackendWithModule;
  const [dq, dk, dv] = [0, 1, 2].map(() => wasm.makeOutput([...q.shape], 'float32')) as [tf.TensorInfo, tf.TensorInfo, tf.TensorInfo];
  runAttention(kernel, wasm, 'backward', layout, scale, dropout, keyLengths, causal, [dout, q, k, v, stats, dq, dk, dv].map((info) => addressOf(wasm, info)));
  return [dq, dk, dv];
}

/**
 * The layout of GPT-2's fused projection qkv [B, T, 3·heads·D] (q, then k, then v, each head's D
 * values side by side), or null where it is not one (or does not fit the kernel's buffers).
 */
function fusedQkvLayout(backend: tf.KernelBackend, qkv: tf.TensorInfo, heads: number): AttentionLayout | null {
  if (qkv.dtype !== 'float32' || qkv.shape.length !== 3 || !Number.isInteger(heads) || heads < 1) return null;
  const [batch, t, width] = qkv.shape as [number, number, number];
  const d = width / 3 / heads;
  if (!Number.isInteger(d) || d < 1 || !simdCausalAttentionFits(backend, t, d)) return null;
  return { matrices: batch * heads, heads, t, d, ldIn: width, ldOut: heads * d };
}

/**
 * Causal self-attention's forward pass read straight from GPT-2's fused projection qkv [B, T, 3·C]
 * (C = heads·D) and written in the layers' layout: `[o, stats]`, o [B, T, C] (heads side by side,
 * as merging them would give) and stats [B, heads, T, 2]. The same arithmetic as
 * {@link simdCausalAttentionForward} on the split heads, without splitting or merging them. Null
 * where the backend has no kernel or the shapes do not fit.
 */
export function simdCausalSelfAttentionForward(
  backend: tf.KernelBackend,
  qkv: tf.TensorInfo,
  heads: number,
  scale: number,
  dropout: DropoutAttrs | null = null,
  keyLengths: readonly number[] | null = null,
): [tf.TensorInfo, tf.TensorInfo] | null {
  const kernel = kernelOf(backend);
  const layout = fusedQkvLayout(backend, qkv, heads);
  if (kernel === null || layout === null || !fitsLengths(layout, keyLengths, true)) return null;
  const wasm = backend as WasmBackendWithModule;
  const [batch, t] = qkv.shape as [number, number];
  const o = wasm.makeOutput([batch, t, layout.ldOut], 'float32');
  const stats = wasm.makeOutput([batch, heads, t, 2], 'float32');
  const base = addressOf(wasm, qkv);
  runAttention(kernel, wasm, 'forward', layout, scale, dropout, keyLengths, true, [base, base + 4 * layout.ldOut, base + 8 * layout.ldOut, addressOf(wasm, o), addressOf(wasm, stats)]);
  return [o, stats];
}

/**
 * Its backward pass: from dO [B, T, C], qkv and the forward pass's stats, the gradient of qkv
 * [B, T, 3·C] (dq, dk, dv where q, k, v lie). Null where {@link simdCausalSelfAttentionForward} would be.
 */
export function simdCausalSelfAttentionBackward(
  backend: tf.KernelBackend,
  dout: tf.TensorInfo,
  qkv: tf.TensorInfo,
  stats: tf.TensorInfo,
  heads: number,
  scale: number,
  dropout: DropoutAttrs | null = null,
  keyLengths: readonly number[] | null = null,
): tf.TensorInfo | null {
  const kernel = kernelOf(backend);
  const layout = fusedQkvLayout(backend, qkv, heads);
  if (kernel === null || layout === null || !fitsLengths(layout, keyLengths, true)) return null;
  const [batch, t] = qkv.shape as [number, number];
  if (!isFloat32Shaped(dout, [batch, t, layout.ldOut]) || !isFloat32Shaped(stats, [batch, heads, t, 2])) return null;
  const wasm = backend as WasmBackendWithModule;
  const dqkv = wasm.makeOutput([...qkv.shape], 'float32');
  const [base, gradient] = [addressOf(wasm, qkv), addressOf(wasm, dqkv)];
  const thirds = (address: number): number[] => [address, address + 4 * layout.ldOut, address + 8 * layout.ldOut];
  runAttention(kernel, wasm, 'backward', layout, scale, dropout, keyLengths, true, [addressOf(wasm, dout), ...thirds(base), addressOf(wasm, stats), ...thirds(gradient)]);
  return dqkv;
}

/**
 * Values per chunk of a fused activation on two threads (at least; more where a call would exceed
 * the chunk words): 64 KB, the helper's result for it staged in its own buffer before it is copied out.
 */
const ACTIVATION_CHUNK_FLOATS = 16384;

/**
 * The elementwise activations core fuses, in the order of the module's `activation_threaded` form:
 * GPT-2's `gelu_new`, BERT's exact `gelu`, Llama's SiLU.
 */
export const ACTIVATION_FORMS = ['gelu-tanh', 'gelu-erf', 'silu'] as const;
/** One of {@link ACTIVATION_FORMS}. */
export type ActivationForm = (typeof ACTIVATION_FORMS)[number];

/**
 * A fused activation (`dy` null: y = f(x)) or its gradient (dx = dy·f′(x)) over float32 values of
 * one shape, in the `form` asked (wasm/gelu-tanh.h, gelu-erf.h, silu.h), shared with the helper
 * thread in ranges of values where it serves. Null where the backend has no kernel.
 */
export function simdActivation(backend: tf.KernelBackend, x: tf.TensorInfo, dy: tf.TensorInfo | null, form: ActivationForm): tf.TensorInfo | null {
  const kernel = kernelOf(backend);
  const size = sizeOf(x.shape);
  if (kernel === null || x.dtype !== 'float32' || (dy !== null && (dy.dtype !== 'float32' || sizeOf(dy.shape) !== size))) return null;
  const wasm = backend as WasmBackendWithModule;
  const out = wasm.makeOutput([...x.shape], 'float32');
  if (size === 0) return out;
  const offset = (info: tf.TensorInfo): number => addressOf(wasm, info);
  const chunk = Math.max(ACTIVATION_CHUNK_FLOATS, 4 * Math.ceil(size / MAX_THREADED_CHUNKS / 4));
  // About 40 operations a value (its exp and the rest), as a product's flops count.
  const threads = chunk <= HELPER_SCRATCH_FLOATS ? threadsFor(kernel, 40 * size, Math.ceil(size / chunk)) : null;
  const [value, gradient] = kernel.activations[form];
  if (threads !== null) {
    threads.activation(threads.control, dy === null ? 0 : 1, size, offset(x), dy === null ? 0 : offset(dy), offset(out), chunk, threads.mayBlock ? 1 : 0, ACTIVATION_FORMS.indexOf(form));
  } else if (dy === null) value(size, offset(x), offset(out));
  else gradient(size, offset(dy), offset(x), offset(out));
  return out;
}
