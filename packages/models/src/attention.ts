import * as tf from '@tensorflow/tfjs-core';
import { LoraError, ShapeError } from '@lora/core';
import { causalAttention, causalMix, causalScores, hostReadIsCheap, scaledSoftmax } from '@lora/core/internal';
import { PACKAGE } from './config-fields.js';

/**
 * The additive value that masks an attention score. Large and finite rather than -Infinity, so a
 * row with every key masked (a padded query) gives a uniform softmax instead of NaN.
 */
export const MASK_VALUE = -1e9;

/**
 * Keys and values of earlier positions for each decoder layer, so generation feeds one new token
 * per step instead of the whole sequence. The cache owns its tensors: call {@link KeyValueCache.dispose}
 * when done.
 *
 * @example
 * const cache = new KeyValueCache(model.config.numLayers);
 * const logits = model.forward(promptIds, { cache }); // fills the cache
 * cache.dispose();
 */
export class KeyValueCache {
  private readonly layers: ({ key: tf.Tensor; value: tf.Tensor } | undefined)[];

  /** @param numLayers Number of decoder layers of the model that will fill it. */
  constructor(readonly numLayers: number) {
    this.layers = Array.from({ length: numLayers }, () => undefined);
  }

  /** Number of positions cached (0 when empty). */
  get length(): number {
    return this.layers[0]?.key.shape[2] ?? 0;
  }

  /**
   * Append this step's keys and values ([B, kvHeads, T, headDim]) for `layer` and return the full
   * ones. The returned tensors belong to the cache (kept out of any enclosing `tf.tidy`).
   */
  update(layer: number, key: tf.Tensor, value: tf.Tensor): {
    /** Keys of every cached position [B, kvHeads, past + T, headDim], owned by the cache. */
    key: tf.Tensor;
    /** Values of every cached position [B, kvHeads, past + T, headDim], owned by the cache. */
    value: tf.Tensor;
  } {
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.numLayers) {
      throw new LoraError(
        `[${PACKAGE}] KeyValueCache.update: layer ${layer} is outside this cache of ${this.numLayers} layer${this.numLayers === 1 ? '' : 's'} (0 to ${this.numLayers - 1}). Create the cache with new KeyValueCache(model.numLayers).`,
        { plugin: PACKAGE },
      );
    }
    const previous = this.layers[layer];
    if (previous && (key.rank !== 4 || key.shape[0] !== previous.key.shape[0] || key.shape[1] !== previous.key.shape[1] || key.shape[3] !== previous.key.shape[3])) {
      throw new ShapeError(
        `[${PACKAGE}] KeyValueCache.update (layer ${layer}): the new keys do not extend the cached ones (a batch size or head layout that changed between calls; use a new cache for a new batch)`,
        [previous.key.shape[0]!, previous.key.shape[1]!, null, previous.key.shape[3]!],
        key.shape,
      );
    }
    const next = previous
      ? { key: tf.keep(tf.concat([previous.key, key], 2)), value: tf.keep(tf.concat([previous.value, value], 2)) }
      : { key: tf.keep(tf.clone(key)), value: tf.keep(tf.clone(value)) };
    if (previous) {
      previous.key.dispose();
      previous.value.dispose();
    }
    this.layers[layer] = next;
    return next;
  }

  /** Batch size of the cached keys, or null while the cache is empty. */
  get batchSize(): number | null {
    return this.layers[0]?.key.shape[0] ?? null;
  }

  /**
   * Refuse a cache that does not fit a model's forward before any layer writes to it: a cache of
   * another number of layers, or one holding another batch size.
   * @throws {LoraError} naming both layer counts; `ShapeError` naming both batch sizes.
   */
  check(numLayers: number, batch: number): void {
    if (this.numLayers !== numLayers) {
      throw new LoraError(
        `[${PACKAGE}] KeyValueCache: this cache has ${this.numLayers} layer${this.numLayers === 1 ? '' : 's'} but the model has ${numLayers}; nothing was cached. Create it with new KeyValueCache(model.numLayers).`,
        { plugin: PACKAGE },
      );
    }
    const cached = this.batchSize;
    if (cached !== null && cached !== batch) {
      throw new ShapeError(
        `[${PACKAGE}] KeyValueCache: the cache holds ${cached} row${cached === 1 ? '' : 's'} but this forward has ${batch}; nothing was cached. Use a new cache (or cache.dispose()) for a new batch`,
        [cached, null],
        [batch, this.length],
      );
    }
  }

  /** Free every cached tensor; the cache is empty afterwards and can be reused. */
  dispose(): void {
    for (let i = 0; i < this.layers.length; i++) {
      const entry = this.layers[i];
      if (entry) {
        entry.key.dispose();
        entry.value.dispose();
      }
      this.layers[i] = undefined;
    }
  }
}

// Causal masks by backend and size, kept on the device: a training loop uses one size, so the mask
// is built and uploaded once instead of every step. A few sizes are kept (generation without a
// key/value cache walks through many); the oldest is freed first.
const causalMasks = new Map<string, tf.Tensor2D>();
const CAUSAL_MASKS_KEPT = 4;

/**
 * The causal additive mask [queries, keys]: 0 where query i may see key j (j ≤ keys − queries + i),
 * {@link MASK_VALUE} elsewhere. Each size is built once per backend and kept (at most
 * `CAUSAL_MASKS_KEPT` = 4 sizes); the returned tensor shares the kept data (no copy) and the
 * caller disposes it.
 */
export function causalMaskBias(queries: number, keys: number): tf.Tensor2D {
  const cacheKey = `${tf.getBackend()}:${queries}:${keys}`;
  let mask = causalMasks.get(cacheKey);
  if (mask && !mask.isDisposed) {
    // Most recently used last.
    causalMasks.delete(cacheKey);
    causalMasks.set(cacheKey, mask);
  } else {
    const data = new Float32Array(queries * keys);
    const offset = keys - queries;
    for (let i = 0; i < queries; i++) for (let j = i + offset + 1; j < keys; j++) data[i * keys + j] = MASK_VALUE;
    while (causalMasks.size >= CAUSAL_MASKS_KEPT) {
      const [oldestKey, oldest] = causalMasks.entries().next().value as [string, tf.Tensor2D];
      oldest.dispose();
      causalMasks.delete(oldestKey);
    }
    mask = tf.keep(tf.tensor2d(data, [queries, keys]));
    causalMasks.set(cacheKey, mask);
  }
  return tf.clone(mask);
}

/** Free the kept causal masks (they are rebuilt on demand). */
export function releaseCausalMasks(): void {
  for (const mask of causalMasks.values()) mask.dispose();
  causalMasks.clear();
}

/**
 * Padding mask [B, keys] of 1 (attend) and 0 (padding) as an additive bias [B, 1, 1, keys].
 * Computed from constant inputs only, so it is safe inside a gradient tape.
 */
export function paddingMaskBias(attentionMask: tf.Tensor): tf.Tensor4D {
  return tf.tidy(() => {
    const [batch, keys] = attentionMask.shape as [number, number];
    const mask = attentionMask.dtype === 'float32' ? attentionMask : tf.cast(attentionMask, 'float32');
    return tf.reshape(tf.mul(tf.sub(1, mask), MASK_VALUE), [batch, 1, 1, keys]) as tf.Tensor4D;
  });
}

/** [B, T, H·D] → [B, H, T, D]. */
export function splitHeads(x: tf.Tensor, heads: number): tf.Tensor4D {
  const [batch, time, width] = x.shape as [number, number, number];
  return tf.transpose(tf.reshape(x, [batch, time, heads, width / heads]), [0, 2, 1, 3]);
}

/** [B, H, T, D] → [B, T, H·D]. */
export function mergeHeads(x: tf.Tensor): tf.Tensor3D {
  const [batch, heads, time, depth] = x.shape as [number, number, number, number];
  return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [batch, time, heads * depth]);
}

/** Options for {@link scaledDotProductAttention}. */
export interface AttentionOptions {
  /** Multiplies q·kᵀ (usually 1/√headDim). */
  readonly scale: number;
  /** Additive bias broadcast to [B, H, Tq, Tk] (causal and padding masks), or null. */
  readonly bias: tf.Tensor | null;
  /**
   * Whether `bias` holds the causal mask (every key after a query's position masked, as
   * {@link causalMaskBias}). Where it is that mask alone ([T, T]: no padding, whose fully masked rows
   * would weigh keys differently), with as many queries as keys (none cached) and one query head per
   * key head, the products skip the masked triangle where core's causal products run (WASM), and
   * without `dropout` attention runs as one kernel each way (core's causal attention).
   */
  readonly causal?: boolean;
  /** Dropout on the attention probabilities (training only). */
  readonly dropout?: (probabilities: tf.Tensor) => tf.Tensor;
}

/**
 * softmax(q·kᵀ·scale + bias)·v for q [B, H, Tq, D] and k, v [B, Hkv, Tk, D], where H is a multiple of
 * Hkv (grouped-query attention: query head h uses key/value head ⌊h / (H/Hkv)⌋, as transformers'
 * `repeat_kv`). Grouping is done by reshaping the queries, so keys and values are never copied.
 * Returns [B, H, Tq, D].
 */
export function scaledDotProductAttention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, options: AttentionOptions): tf.Tensor4D {
  return tf.tidy(() => {
    const [batch, heads, queries, depth] = q.shape as [number, number, number, number];
    const kvHeads = k.shape[1]!;
    const keys = k.shape[2]!;
    const group = heads / kvHeads;
    // Causal, square and ungrouped: scores below the diagonal only (zero above it, where the bias
    // masks them), and the output from the probabilities' lower triangle (zero above, as masked).
    const triangular = options.causal === true && options.bias?.rank === 2 && queries === keys && group === 1;
    // Without dropout on the probabilities, the whole of it in one kernel each way where core has
    // one (WASM): the same values, the [B, H, T, T] probabilities neither written nor kept.
    const whole = triangular && options.dropout === undefined ? causalAttention(q, k, v, options.scale) : null;
    if (whole !== null) return whole as tf.Tensor4D;
    const grouped = group === 1 ? q : tf.reshape(q, [batch, kvHeads, group * queries, depth]);
    let scores = (triangular ? causalScores(q, k) : null) ?? tf.matMul(grouped, k, false, true);
    if (group !== 1) scores = tf.reshape(scores, [batch, heads, queries, keys]);
    // softmax(scale·scores + bias) as one op: one fused kernel each way on WASM for a causal mask.
    let probabilities = scaledSoftmax(scores, options.scale, options.bias);
    if (options.dropout) probabilities = options.dropout(probabilities);
    if (group === 1) return ((triangular ? causalMix(probabilities, v) : null) ?? tf.matMul(probabilities, v)) as tf.Tensor4D;
    const out = tf.matMul(tf.reshape(probabilities, [batch, kvHeads, group * queries, keys]), v);
    return tf.reshape(out, [batch, heads, queries, depth]) as tf.Tensor4D;
  });
}

/**
 * Each sequence's length where `attentionMask` [B, T] is right padding (each row's ones first, then
 * zeros only, at least one 1): what core's one-kernel causal attention takes for it (`keyLengths`),
 * with the padding mask's meaning. Null for no mask or any other one (left padding, holes, an
 * all-zero row), and on GPU backends, where reading the mask would stall the device (the kernel is
 * WASM's; the host-memory backends read it for free).
 */
export function rightPaddedLengths(attentionMask: tf.Tensor | undefined): number[] | null {
  if (attentionMask === undefined || attentionMask.rank !== 2 || !hostReadIsCheap()) return null;
  const [batch, time] = attentionMask.shape as [number, number];
  const values = attentionMask.dataSync();
  const lengths: number[] = [];
  for (let b = 0; b < batch; b++) {
    const row = values.subarray(b * time, (b + 1) * time);
    let length = 0;
    while (length < time && row[length] !== 0) length += 1;
    for (let j = length; j < time; j++) if (row[j] !== 0) return null;
    if (length === 0) return null;
    lengths.push(length);
  }
  return lengths;
}

/**
 * The full additive attention bias for `queries` new positions after `past` cached ones:
 * causal (when `causal`) plus padding (when `attentionMask` [B, past + queries] is given). Null when
 * nothing is masked.
 * @throws {ShapeError} when the mask does not cover past + new positions.
 */
export function attentionBias(options: {
  queries: number;
  past: number;
  causal: boolean;
  attentionMask?: tf.Tensor | undefined;
  batch: number;
}): tf.Tensor | null {
  const keys = options.past + options.queries;
  const { attentionMask } = options;
  if (attentionMask && (attentionMask.rank !== 2 || attentionMask.shape[0] !== options.batch || attentionMask.shape[1] !== keys)) {
    throw new ShapeError(`[${PACKAGE}] attentionMask (covering cached and new positions)`, [options.batch, keys], attentionMask.shape);
  }
  const causal = options.causal && options.queries > 1 ? causalMaskBias(options.queries, keys) : null;
  if (!attentionMask) return causal;
  if (!causal) return paddingMaskBias(attentionMask);
  const combined = tf.tidy(() => tf.add(causal, paddingMaskBias(attentionMask)));
  causal.dispose();
  return combined;
}
