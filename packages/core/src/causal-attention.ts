import * as tf from '@tensorflow/tfjs-core';
import { dropoutAttrs, type DropoutAttrs } from './dropout.js';
import { activeBackendHasKernels } from './registered-kernels.js';
import { simdCausalAttentionFits } from './wasm-simd-matmul.js';

/**
 * tfjs kernel name of causal self-attention in one kernel: inputs `q`, `k`, `v` [..., T, D] (one
 * shape), attribute `scale`; outputs o = P·v [..., T, D], P = softmax(scale·q·kᵀ) over the keys up to
 * each query's position, and `stats` [..., T, 2] (each query row's max and 1/Σ, from which the
 * gradient recomputes P: the [..., T, T] probabilities are not kept). With attribute `heads` > 0,
 * q, k, v and o are in the layers' layout [B, T, heads·D] instead, and the stats [B, heads, T, 2].
 * With attribute `dropoutThreshold` > 0, P is dropped before it multiplies v as core's dropout
 * kernel drops a [..., T, T] tensor of it with attributes `dropoutSeed`, `dropoutThreshold` and
 * `dropoutScale` (its seed, threshold and scale). With attribute `keyLengths` (a number per sequence;
 * empty: none), the layers' layout's sequences are right-padded: keys from a sequence's length on
 * are masked for every query. Registered by core's WASM kernels; differentiable through
 * {@link CAUSAL_ATTENTION_GRAD_KERNEL}.
 */
export const CAUSAL_ATTENTION_KERNEL = 'LoraCausalAttention';
/** tfjs kernel name of its gradient: inputs `dy`, `q`, `k`, `v`, `stats`, the forward kernel's attributes; outputs dq, dk, dv. */
export const CAUSAL_ATTENTION_GRAD_KERNEL = 'LoraCausalAttentionGrad';

/**
 * tfjs kernel name of the same attention read straight from GPT-2's fused projection: input `qkv`
 * [B, T, 3·C] (q, k, v side by side, each C = heads·D wide), attributes `heads`, `scale` and the
 * dropout ones of {@link CAUSAL_ATTENTION_KERNEL}; outputs
 * o [B, T, C] (the heads side by side, as merging them gives) and `stats` [B, heads, T, 2].
 * Differentiable through {@link CAUSAL_SELF_ATTENTION_GRAD_KERNEL}.
 */
export const CAUSAL_SELF_ATTENTION_KERNEL = 'LoraCausalSelfAttention';
/** tfjs kernel name of its gradient: inputs `dy` [B, T, C], `qkv`, `stats`, attributes as above; output d(qkv). */
export const CAUSAL_SELF_ATTENTION_GRAD_KERNEL = 'LoraCausalSelfAttentionGrad';

/** Options of {@link causalAttention} and {@link causalSelfAttention}: dropout on the probabilities, right padding. */
export interface CausalAttentionOptions {
  /**
   * Each sequence's length where the batch is right-padded (its tokens first, padding after): one
   * integer in [1, T] per sequence, for the layers' layout (`heads` given) and the fused projection.
   * Keys from a sequence's length on are masked for every query, as adding a padding mask to the
   * causal one masks them (a padding query attends to the sequence's tokens). Default: none.
   */
  readonly keyLengths?: readonly number[];
  /**
   * Drop probability of the attention probabilities (attention dropout in training), in [0, 1);
   * default 0. The mask is core's `dropout` of the [..., T, T] probabilities, the same values.
   */
  readonly dropout?: number;
  /** Its 32-bit seed (default: as `dropout` takes one: the open `withSeededRandom` scope's next, else random). */
  readonly seed?: number;
}

/** The kernels' dropout attributes (none: threshold 0), the seed drawn only where there is dropout, and the sequences' lengths. */
export function optionKernelAttrs(options: CausalAttentionOptions): tf.NamedAttrMap {
  const p = options.dropout ?? 0;
  const attrs = p === 0 ? null : dropoutAttrs(p, options.seed === undefined ? {} : { seed: options.seed });
  return { dropoutSeed: attrs?.seed ?? 0, dropoutThreshold: attrs?.threshold ?? 0, dropoutScale: attrs?.scale ?? 1, keyLengths: [...(options.keyLengths ?? [])] };
}

/** Whether `keyLengths` (when given) has one integer in [1, T] per sequence of `batch`. */
export function lengthsFit(keyLengths: readonly number[] | undefined, batch: number, t: number): boolean {
  return keyLengths === undefined || (keyLengths.length === batch && keyLengths.every((length) => Number.isInteger(length) && length >= 1 && length <= t));
}

/** The sequences' lengths of a causal attention kernel's attributes (see {@link CAUSAL_ATTENTION_KERNEL}), or null. */
export function attentionKeyLengthsOf(attrs: tf.NamedAttrMap | undefined): readonly number[] | null {
  const lengths = attrs?.['keyLengths'] as number[] | undefined;
  return lengths === undefined || lengths.length === 0 ? null : lengths;
}

/** The dropout of a causal attention kernel's attributes (see {@link CAUSAL_ATTENTION_KERNEL}), or null. */
export function attentionDropoutOf(attrs: tf.NamedAttrMap | undefined): DropoutAttrs | null {
  const threshold = (attrs?.['dropoutThreshold'] as number | undefined) ?? 0;
  return threshold > 0 ? { seed: attrs!['dropoutSeed'] as number, threshold, scale: attrs!['dropoutScale'] as number } : null;
}

function registerCausalAttentionGradient(): void {
  if (tf.getGradient(CAUSAL_ATTENTION_KERNEL) !== undefined) return;
  tf.registerGradient({
    kernelName: CAUSAL_SELF_ATTENTION_KERNEL,
    inputsToSave: ['qkv'],
    outputsToSave: [false, true],
    gradFunc: (dys, saved, attrs) => {
      const [dy] = dys as [tf.Tensor];
      const [qkv, stats] = saved as [tf.Tensor, tf.Tensor];
      return {
        qkv: () => tf.engine().runKernel(CAUSAL_SELF_ATTENTION_GRAD_KERNEL, { dy, qkv, stats }, { ...attrs }) as tf.Tensor,
      };
    },
  });
  registerQkvAttentionGradient(CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL);
}

/**
 * The gradient of an attention kernel on separate q, k, v whose outputs are [o, stats]: its
 * gradient kernel `gradKernelName` (inputs dy, q, k, v, stats; the forward kernel's attributes),
 * run once for dq, dk and dv. Causal attention's and bidirectional attention's.
 */
export function registerQkvAttentionGradient(kernelName: string, gradKernelName: string): void {
  tf.registerGradient({
    kernelName,
    inputsToSave: ['q', 'k', 'v'],
    outputsToSave: [false, true],
    gradFunc: (dys, saved, attrs) => {
      // `stats` is an output only so that the gradient can recompute P: its own gradient is zero.
      const [dy] = dys as [tf.Tensor];
      const [q, k, v, stats] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
      // One kernel gives all three, run once, here; tfjs asks for each input's separately.
      const [dq, dk, dv] = tf.engine().runKernel(gradKernelName, { dy, q, k, v, stats }, { ...attrs }) as tf.Tensor[];
      return { q: () => dq!, k: () => dk!, v: () => dv! };
    },
  });
}

/**
 * Causal self-attention softmax(scale·q·kᵀ + causal mask)·v for q, k, v [..., T, D] of one shape
 * (as many queries as keys, one query head per key head), differentiable in all three, as one
 * kernel forward and one backward: on a backend with core's causal attention (the WASM backend
 * after `initRuntime()`), float32, T up to about 4,000 at D = 64 (on both threads up to about
 * 2,000, the helper's buffer grown for them; longer ones on the calling thread).
 * Each matrix's scores stay in cache from product to softmax to product, and the [..., T, T]
 * probabilities are neither written nor kept for the gradient (recomputed there). Equal, value for
 * value, to core's causal products around its scaled softmax ({@link causalScores},
 * {@link causalMix}). With `options.heads`, q, k, v [B, T, heads·D] are in the layers' layout (as
 * separate projections give them, each head's D values side by side) and so is the result: the
 * same values as splitting the heads, attending and merging them back, without the transposes
 * either way. With `options.kvHeads` (a divisor of `heads`), k and v [B, T, kvHeads·D] hold fewer
 * heads, each serving heads / kvHeads query heads in turn (grouped-query attention, as transformers'
 * `repeat_kv`): they are broadcast to one per query head, and their gradients sum each group back.
 * With `options.dropout`, the probabilities are dropped before they multiply v, with the mask core's
 * `dropout` gives the [..., T, T] tensor of them (with heads, [B, heads, T, T]) from the same seed.
 * With `options.keyLengths` (the layers' layout only), the batch is right-padded (see
 * {@link CausalAttentionOptions.keyLengths}).
 * Returns null otherwise (the caller computes it another way), drawing no seed.
 * @throws {ConfigError} for a dropout outside [0, 1) or a seed that is not a 32-bit unsigned integer.
 */
export function causalAttention(
  q: tf.Tensor,
  k: tf.Tensor,
  v: tf.Tensor,
  scale: number,
  options: { readonly heads?: number; readonly kvHeads?: number } & CausalAttentionOptions = {},
): tf.Tensor | null {
  const { heads } = options;
  const kvHeads = options.kvHeads ?? heads;
  const sameShape = (a: tf.Tensor, b: tf.Tensor): boolean => a.dtype === 'float32' && a.rank === b.rank && a.shape.every((size, axis) => size === b.shape[axis]);
  if (q.dtype !== 'float32' || q.rank < 2 || !sameShape(v, k) || !activeBackendHasKernels(CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL)) return null;
  let [t, d] = q.shape.slice(-2) as [number, number];
  if (heads === undefined) {
    // Stacks of [..., T, D] matrices have no sequences to pad.
    if (kvHeads !== undefined || !sameShape(k, q) || options.keyLengths !== undefined) return null;
  } else {
    if (q.rank !== 3 || !Number.isInteger(heads) || heads < 1 || q.shape[2]! % heads !== 0) return null;
    d = q.shape[2]! / heads;
    t = q.shape[1]!;
    // Grouped-query attention: a whole number of query heads per key/value head, k and v as wide as that many heads.
    const grouped = kvHeads !== undefined && Number.isInteger(kvHeads) && kvHeads >= 1 && heads % kvHeads === 0;
    if (!grouped || k.rank !== 3 || k.shape[0] !== q.shape[0] || k.shape[1] !== t || k.shape[2] !== kvHeads * d || !lengthsFit(options.keyLengths, q.shape[0]!, t)) return null;
  }
  if (!simdCausalAttentionFits(tf.backend(), t, d)) return null;
  registerCausalAttentionGradient();
  return tf.tidy(() => {
    // Key/value head h serves query heads h·group … h·group + group − 1 (transformers' repeat_kv):
    // broadcast to one per query head by a product with ones, whose gradient sums each group back
    // (tfjs's Tile has no gradient past rank 4).
    const group = heads === undefined || kvHeads === undefined ? 1 : heads / kvHeads;
    const perQueryHead = (x: tf.Tensor): tf.Tensor => {
      if (group === 1) return x;
      const [batch] = x.shape as [number];
      return tf.reshape(tf.mul(tf.reshape(x, [batch * t * kvHeads!, 1, d]), tf.ones([1, group, 1])), [batch, t, heads! * d]);
    };
    const [o] = tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q, k: perQueryHead(k), v: perQueryHead(v) }, { scale, heads: heads ?? 0, ...optionKernelAttrs(options) }) as tf.Tensor[];
    // The stats (and broadcast k, v) stay on the tape, saved for the gradient, until it is disposed; outside a tape tidy frees them.
    return o!;
  });
}

/**
 * Causal self-attention read straight from a fused projection (GPT-2's `c_attn` output): qkv
 * [B, T, 3·C] holds q, k and v side by side (C = heads·D, each head's D values side by side), and the
 * result [B, T, C] holds the heads side by side, as splitting qkv into heads, {@link causalAttention}
 * and merging the heads back would give, value for value, without the splits, transposes and merge
 * (and their gradients: one d(qkv) instead of three gradients to concatenate). Differentiable in qkv.
 * `options.dropout` and `options.keyLengths` work as {@link causalAttention}'s. Null where
 * {@link causalAttention} would be (and for a width not divisible into 3·heads), drawing no seed.
 * @throws {ConfigError} for a dropout outside [0, 1) or a seed that is not a 32-bit unsigned integer.
 */
export function causalSelfAttention(qkv: tf.Tensor, heads: number, scale: number, options: CausalAttentionOptions = {}): tf.Tensor | null {
  if (qkv.dtype !== 'float32' || qkv.rank !== 3 || !activeBackendHasKernels(CAUSAL_SELF_ATTENTION_KERNEL, CAUSAL_SELF_ATTENTION_GRAD_KERNEL)) return null;
  const [, t, width] = qkv.shape as [number, number, number];
  const depth = width / 3 / heads;
  if (!Number.isInteger(heads) || heads < 1 || !Number.isInteger(depth) || !lengthsFit(options.keyLengths, qkv.shape[0]!, t) || !simdCausalAttentionFits(tf.backend(), t, depth)) return null;
  registerCausalAttentionGradient();
  const [o, stats] = tf.engine().runKernel(CAUSAL_SELF_ATTENTION_KERNEL, { qkv }, { heads, scale, ...optionKernelAttrs(options) }) as tf.Tensor[];
  // As in causalAttention: the tape keeps its own copy of the stats where it records.
  stats!.dispose();
  return o!;
}
