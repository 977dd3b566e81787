import * as tf from '@tensorflow/tfjs-core';
import { KernelReplacements } from './kernel-replacements.js';
import { hasSimdBatchMatMul, packsTransposedA, simdBatchMatMul, simdBatchMatMulAsParallel } from './wasm-simd-matmul.js';
import { isWasmBackend, type WasmHeapBackend } from './wasm-module.js';

/**
 * tfjs-backend-wasm (4.x) runs a matMul on XNNPACK (SIMD, multi-threaded) only when neither operand
 * is transposed and both have a batch size of 1; every other case falls to a scalar triple loop
 * that is 10-40× slower and single-threaded. Training hits that loop all the time: the gradients of
 * `y = x·W` are `dy·Wᵀ` and `xᵀ·dy`, a PyTorch-layout Linear computes `x·Wᵀ`, a tied LM head `h·Eᵀ`,
 * attention `q·kᵀ` and `p·v` per head.
 *
 * These kernels wrap the WASM `BatchMatMul` and `_FusedMatMul` kernels through tfjs's kernel
 * registry. Where core's own batched SIMD kernel (wasm-simd-matmul.ts) runs on as many threads as
 * XNNPACK would (its two threads against tfjs's two in Node, one against one in a single-threaded
 * build), every float32 product runs on it: alone it is the faster of the two at each product of
 * the `small` model's step ([1024,1024]² on two threads 77-81 against 71-75 GFLOP/s, on one 41
 * against 37); in a LoRA step about as fast (XNNPACK keeps a frozen weight packed, this kernel packs
 * it at each call), in a full fine-tuning step 5-7% faster; it reads transposed operands in place
 * (no transposed copy of a frozen weight is kept, no Transpose of a trainable one runs), adds a
 * fused bias of n values itself, and loses less when another process holds a core. Where XNNPACK has more
 * threads (a browser's threaded build, a machine given more), it keeps the dense products and
 * these kernels bring the other calls to the fast form before delegating to the original kernel:
 * - a transposed operand is transposed for real (WASM's `Transpose` kernel, cheap next to the product);
 *   a frozen weight (a non-trainable `tf.Variable`) is transposed once and the copy kept while the
 *   variable holds that data, so LoRA steps do not transpose it again every step (and XNNPACK,
 *   which caches its packed weights by operand, packs it once);
 * - a stack of left operands times one right operand is folded into one tall matrix;
 * - a stack times a stack (attention), thin products (a dimension of at most
 *   {@link THIN_DIMENSION}: LoRA's rank-r factors), products of a few rows (decoding) and those
 *   whose transposed left operand the kernel copies in blocks (full fine-tuning's xᵀ·dy) run on
 *   core's own batched SIMD kernel
 *   (wasm-simd-matmul.ts), which reads transposed and broadcast operands in place and, on tfjs's
 *   threaded build in Node, shares each product with a helper thread of its own.
 * The products are the same, summed in another order than the loop's (float32 rounding differs,
 * nothing else).
 */

const MATMUL_KERNELS = ['BatchMatMul', '_FusedMatMul'] as const;
/**
 * Products with n or k at most this (or m, when A is transposed) are thin: packing and the
 * threaded XNNPACK call, and the transposes it needs, cost more than the product itself.
 */
export const THIN_DIMENSION = 16;
/**
 * Products of at most this many rows in all (token-by-token decoding: one row per sequence) run on
 * core's kernel too, which streams the weight on the calling thread. XNNPACK splits even these
 * across its thread pool and waits for its worker at every product; when another process holds the
 * second core, that wait is a scheduler slice (`pnpm bench`'s generate section: 1.58 → 5.26 ms per
 * token under one busy process, against 1.90 → 2.05 ms this way).
 */
const FEW_ROWS = 4;
const replacements = new KernelReplacements();
const NO_FROZEN_DATA: ReadonlySet<tf.DataId> = new Set();

interface MatMulAttrs {
  transposeA: boolean;
  transposeB: boolean;
}

/** The BackendWasm methods used here (all public on the class, used by its own kernels); the kernels here read float32 tensors only. */
interface WasmKernelBackend extends WasmHeapBackend {
  typedArrayFromHeap(info: tf.TensorInfo): Float32Array;
  disposeData(dataId: tf.DataId, force?: boolean): boolean;
}

const isWasmKernelBackend = (backend: tf.KernelBackend): backend is WasmKernelBackend => isWasmBackend(backend);

function sizeOf(shape: readonly number[]): number {
  return shape.reduce((product, dimension) => product * dimension, 1);
}

function fastMatMul(original: tf.KernelConfig, backendName: string): tf.KernelFunc {
  const originalFunc = original.kernelFunc;
  const run = (kernelName: string, inputs: tf.NamedTensorInfoMap, backend: tf.KernelBackend, attrs: tf.NamedAttrMap): tf.TensorInfo => {
    const kernel = tf.getKernel(kernelName, backendName);
    if (kernel === undefined) throw new Error(`[@lora/core] The ${backendName} backend has no ${kernelName} kernel.`);
    return kernel.kernelFunc({ inputs, backend, attrs }) as tf.TensorInfo;
  };

  return (args) => {
    const { inputs, attrs } = args;
    const backend = args.backend as tf.KernelBackend;
    const a = inputs['a']!;
    const b = inputs['b']!;
    const bias = inputs['bias'];
    const prelu = inputs['preluActivationWeights'];
    const { transposeA, transposeB } = attrs as unknown as MatMulAttrs;
    const batchA = sizeOf(a.shape.slice(0, -2));
    const batchB = sizeOf(b.shape.slice(0, -2));
    const m = transposeA ? a.shape[a.shape.length - 1]! : a.shape[a.shape.length - 2]!;
    const k = transposeA ? a.shape[a.shape.length - 2]! : a.shape[a.shape.length - 1]!;
    const n = transposeB ? b.shape[b.shape.length - 2]! : b.shape[b.shape.length - 1]!;
    const biasFits = bias === undefined || sizeOf(bias.shape) === n;
    const alreadyFast = !transposeA && !transposeB && batchA === 1 && batchB === 1;
    const stacked = batchB > 1;
    const float32 = a.dtype === 'float32' && b.dtype === 'float32';
    const batchShape = tf.broadcast_util.assertAndGetBroadcastShape(a.shape.slice(0, -2), b.shape.slice(0, -2));
    const thin = n <= THIN_DIMENSION || k <= THIN_DIMENSION || (transposeA && m <= THIN_DIMENSION);
    const fewRows = batchA * m <= FEW_ROWS;
    // Dense products too, where core's kernel runs on as many threads as XNNPACK would (see the top of this file).
    const dense = float32 && simdBatchMatMulAsParallel(backend);
    // Else, a transposed activation with rows far apart (full fine-tuning's weight gradient xᵀ·dy):
    // core's kernel copies its rows in blocks, where XNNPACK needs it transposed for real and packs
    // the other operand, which changes every step, again at every call. (Not asked when `dense`:
    // frozenWeightData walks every registered variable.)
    const copiesA = !dense && float32 && packsTransposedA(transposeA, m, k, n) && batchA === 1 && batchB === 1 && !frozenWeightData().has(a.dataId);
    // Transposed copies kept while XNNPACK took the products (before the helper thread started) are not needed again.
    if (dense) releaseStaleTransposes(backend, NO_FROZEN_DATA);
    if (float32 && (stacked || thin || fewRows || copiesA || dense) && hasSimdBatchMatMul(backend)) {
      const activation = (attrs?.['activation'] as string | undefined) ?? 'linear';
      // The SIMD kernel computes the product and adds a bias of n values; another bias or an activation is applied after it.
      if (!biasFits || prelu !== undefined || activation !== 'linear') return unfusedProduct(backendName, backend, inputs, attrs ?? {});
      const out = simdBatchMatMul(backend, a, b, transposeA, transposeB, batchShape, 'none', bias ?? null);
      if (out !== null) return out;
    }
    // XNNPACK reads a bias of exactly n values; stacks it does not serve are left to tfjs's loop.
    const usable = float32 && isWasmKernelBackend(backend) && biasFits && !stacked;
    if (alreadyFast && biasFits) return originalFunc(args);
    if (!usable) {
      // tfjs's loop adds bias[min(row·n + column, size − 1)] once per 48-wide block of k, which is
      // right only for a single row and k <= 48; its XNNPACK path reads n bias values whatever the
      // bias holds. A fused product with a bias that takes either path is computed unfused instead.
      return bias === undefined ? originalFunc(args) : unfusedProduct(backendName, backend, inputs, attrs ?? {});
    }

    const temporaries: tf.TensorInfo[] = [];
    const keep = (info: tf.TensorInfo): tf.TensorInfo => {
      temporaries.push(info);
      return info;
    };
    const frozen = frozenWeightData();
    releaseStaleTransposes(backend, frozen);
    const transposeLastTwo = (x: tf.TensorInfo): tf.TensorInfo => {
      const rank = x.shape.length;
      const perm = [...Array.from({ length: rank - 2 }, (_, axis) => axis), rank - 1, rank - 2];
      if (!frozen.has(x.dataId)) return keep(run('Transpose', { x }, backend, { perm }));
      const kept = transposesOf(backend);
      let transposed = kept.get(x.dataId);
      if (transposed === undefined) {
        transposed = run('Transpose', { x }, backend, { perm });
        kept.set(x.dataId, transposed);
      }
      // The kept copy has the frozen weight's own shape, transposed; callers reshape as they need.
      return transposed;
    };
    const reshape = (x: tf.TensorInfo, shape: number[]): tf.TensorInfo => keep(run('Reshape', { x }, backend, { shape }));
    const product = (left: tf.TensorInfo, right: tf.TensorInfo): tf.TensorInfo =>
      originalFunc({ inputs: { ...inputs, a: left, b: right }, backend, attrs: { ...attrs, transposeA: false, transposeB: false } }) as tf.TensorInfo;
    try {
      // A bias or PReLU weights belong to C's columns, so only a plain (or elementwise-activated)
      // product may be computed transposed.
      const swappable = batchA === 1 && bias === undefined && prelu === undefined;
      const cached = { cachedA: frozen.has(a.dataId), cachedB: frozen.has(b.dataId) };
      if (swappable && transposeCost({ transposeA, transposeB, m, k, n, ...cached }).swapped) {
        // Cᵀ = op(B)ᵀ·op(A)ᵀ moves fewer values through WASM's (slow) Transpose than C = op(A)·op(B):
        // e.g. LoRA's dB = dyᵀ·(x·Aᵀ) transposes a [tokens, 8] matrix instead of a [tokens, out] one.
        const left = transposeB ? b : transposeLastTwo(b);
        const right = transposeA ? a : transposeLastTwo(a);
        const swappedOut = keep(product(reshape(left, [1, n, k]), reshape(right, [1, k, m])));
        const out = run('Transpose', { x: reshape(swappedOut, [n, m]) }, backend, { perm: [1, 0] });
        out.shape = [...batchShape, m, n];
        return out;
      }
      // Untransposed, contiguous: left [..., m, k] and right [..., k, n].
      const left = transposeA ? transposeLastTwo(a) : a;
      const right = transposeB ? transposeLastTwo(b) : b;
      // One right matrix: every left row meets the same weights, so the stack is one tall matrix.
      const out = product(reshape(left, [1, batchA * m, k]), reshape(right, [1, k, n]));
      out.shape = [...batchShape, m, n];
      return out;
    } finally {
      for (const temporary of temporaries) backend.disposeData(temporary.dataId);
    }
  };
}

/** tfjs's `_FusedMatMul` as separate kernels: the product (through the patched BatchMatMul), the bias if any, the activation. */
function unfusedProduct(backendName: string, backend: tf.KernelBackend, inputs: tf.NamedTensorInfoMap, attrs: tf.NamedAttrMap): tf.TensorInfo {
  const kernel = (name: string): tf.KernelFunc => {
    const found = tf.getKernel(name, backendName);
    if (found === undefined) throw new Error(`[@lora/core] The ${backendName} backend has no ${name} kernel.`);
    return found.kernelFunc;
  };
  const { transposeA, transposeB, activation, leakyreluAlpha } = attrs as unknown as MatMulAttrs & { activation: string; leakyreluAlpha?: number };
  const dispose = (info: tf.TensorInfo): void => void (backend as WasmKernelBackend).disposeData(info.dataId);
  const product = kernel('BatchMatMul')({ inputs: { a: inputs['a']!, b: inputs['b']! }, backend, attrs: { transposeA, transposeB } }) as tf.TensorInfo;
  const bias = inputs['bias'];
  const biased = bias === undefined ? product : (kernel('Add')({ inputs: { a: product, b: bias }, backend, attrs: {} }) as tf.TensorInfo);
  if (biased !== product) dispose(product);
  const activations: Record<string, () => tf.TensorInfo> = {
    linear: () => biased,
    relu: () => kernel('Relu')({ inputs: { x: biased }, backend, attrs: {} }) as tf.TensorInfo,
    relu6: () => kernel('Relu6')({ inputs: { x: biased }, backend, attrs: {} }) as tf.TensorInfo,
    elu: () => kernel('Elu')({ inputs: { x: biased }, backend, attrs: {} }) as tf.TensorInfo,
    sigmoid: () => kernel('Sigmoid')({ inputs: { x: biased }, backend, attrs: {} }) as tf.TensorInfo,
    leakyrelu: () => kernel('LeakyRelu')({ inputs: { x: biased }, backend, attrs: { alpha: leakyreluAlpha ?? 0.2 } }) as tf.TensorInfo,
    prelu: () => kernel('Prelu')({ inputs: { x: biased, alpha: inputs['preluActivationWeights']! }, backend, attrs: {} }) as tf.TensorInfo,
  };
  const apply = activations[activation];
  if (apply === undefined) throw new Error(`[@lora/core] Unknown fused activation "${activation}".`);
  const out = apply();
  if (out !== biased) dispose(biased);
  return out;
}

/**
 * Values each way of computing `op(A)·op(B)` sends through WASM's Transpose kernel (it moves about
 * 0.1 G values/s, while XNNPACK packs and multiplies far faster): directly, transposing the
 * transposed operands; or as `(op(B)ᵀ·op(A)ᵀ)ᵀ`, transposing the other operands and the result.
 */
export function transposeCost(shape: {
  transposeA: boolean;
  transposeB: boolean;
  m: number;
  k: number;
  n: number;
  /** Whether A's transpose is already kept (a frozen weight's): it then costs nothing (default false). */
  cachedA?: boolean;
  /** The same for B (default false). */
  cachedB?: boolean;
}): {
  direct: number;
  viaTranspose: number;
  swapped: boolean;
} {
  const { transposeA, transposeB, m, k, n } = shape;
  const costA = shape.cachedA === true ? 0 : m * k;
  const costB = shape.cachedB === true ? 0 : k * n;
  const direct = (transposeA ? costA : 0) + (transposeB ? costB : 0);
  const viaTranspose = (transposeB ? 0 : costB) + (transposeA ? 0 : costA) + m * n;
  return { direct, viaTranspose, swapped: viaTranspose < direct };
}

/** Transposed copies of frozen weights, by backend and the weight's data. */
const keptTransposes = new WeakMap<tf.KernelBackend, Map<tf.DataId, tf.TensorInfo>>();

function transposesOf(backend: tf.KernelBackend): Map<tf.DataId, tf.TensorInfo> {
  let kept = keptTransposes.get(backend);
  if (kept === undefined) {
    kept = new Map();
    keptTransposes.set(backend, kept);
  }
  return kept;
}

/**
 * The data of every non-trainable variable: frozen weights, whose data changes only when they are
 * assigned (merge, loading), which gives them new data.
 */
function frozenWeightData(): Set<tf.DataId> {
  const frozen = new Set<tf.DataId>();
  for (const variable of Object.values(tf.engine().state.registeredVariables)) {
    if (!variable.trainable && !variable.isDisposed) frozen.add(variable.dataId);
  }
  return frozen;
}

/** Free the kept transposes of data no longer held by a frozen weight (assigned, trainable again, disposed). */
function releaseStaleTransposes(backend: tf.KernelBackend, frozen: ReadonlySet<tf.DataId>): void {
  const kept = keptTransposes.get(backend);
  if (kept === undefined) return;
  for (const [source, transposed] of kept) {
    if (frozen.has(source)) continue;
    backend.disposeData(transposed.dataId);
    kept.delete(source);
  }
}

/**
 * Number of frozen-weight transposes the fast matMul of `backendName` keeps (each is freed as soon
 * as its weight is assigned, made trainable or disposed, and by {@link restoreWasmMatMul}).
 */
export function keptWeightTransposes(backendName = 'wasm'): number {
  const backend = tf.engine().registry[backendName];
  return backend === undefined ? 0 : (keptTransposes.get(backend)?.size ?? 0);
}

/**
 * Route `BatchMatMul` and `_FusedMatMul` of a backend running tfjs's WASM kernels (`wasm`, or a
 * second instance started by `@lora/cuda-backend`'s `startWasmBackend`) through the fast paths
 * described at the top of this file. `initRuntime()` does this for `wasm`. Idempotent.
 *
 * @param backendName tfjs backend name (default `wasm`).
 * @returns The kernel names patched by this call (empty when already patched or not registered).
 * @example
 * useFastWasmMatMul(); // initRuntime() does this for the wasm backend
 */
export function useFastWasmMatMul(backendName = 'wasm'): string[] {
  return replacements.replace(backendName, Object.fromEntries(MATMUL_KERNELS.map((kernelName) => [kernelName, (stock: tf.KernelConfig) => fastMatMul(stock, backendName)])));
}

/**
 * Put back tfjs's own matMul kernels of `backendName`, and free the kept frozen-weight transposes.
 * @returns The kernel names restored.
 */
export function restoreWasmMatMul(backendName = 'wasm'): string[] {
  const backend = tf.engine().registry[backendName];
  if (backend !== undefined) releaseStaleTransposes(backend, new Set());
  return replacements.restore(backendName);
}

/** The matMul kernels of `backendName` currently routed through the fast paths. */
export function fastWasmMatMulKernels(backendName = 'wasm'): string[] {
  return replacements.names(backendName);
}

/**
 * Whether `tf.fused.matMul` with a bias is right on the active backend: everywhere but on a WASM
 * backend whose matMul kernels are tfjs's own (tfjs-backend-wasm 4.22's loop adds the bias wrongly
 * for transposed and batched products; core's fast kernels compute those unfused or on XNNPACK).
 */
export function fusedBiasProductIsSafe(): boolean {
  const backendName = tf.getBackend();
  const backend = tf.engine().registry[backendName];
  return backend === undefined || !isWasmKernelBackend(backend) || replacements.names(backendName).includes('_FusedMatMul');
}
