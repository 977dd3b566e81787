import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from './errors.js';
import { hashCounter, nextScopedSeed } from './random-scope.js';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of the fused dropout (input `x`; attributes {@link DropoutAttrs}), registered by core's WASM kernels. */
export const DROPOUT_KERNEL = 'LoraDropout';

/** The attributes of {@link DROPOUT_KERNEL}, fixed at the forward call and reused by its gradient. */
export interface DropoutAttrs {
  /** 32-bit seed of the mask. */
  readonly seed: number;
  /** Element i is kept when the top 24 bits of `hashCounter(seed, i)` are ≥ this ({@link dropoutThreshold}). */
  readonly threshold: number;
  /** 1/(1 − p), rounded to float32 by the kernel and by the mask alike. */
  readonly scale: number;
}

/** 2²⁴: the hash's top 24 bits as a uniform u = bits / 2²⁴ in [0, 1), exact in float32. */
const UNIFORM_STEPS = 2 ** 24;

/**
 * The integer form of "keep iff u ≥ p" for u = k / 2²⁴: k ≥ ⌈p·2²⁴⌉ (p·2²⁴ is exact in float64), so
 * the kernel and the mask compare integers and cannot round differently.
 */
export function dropoutThreshold(p: number): number {
  return Math.ceil(p * UNIFORM_STEPS);
}

/**
 * The mask as values: `scale` (float32) where element i is kept, 0 elsewhere. A pure function of
 * (seed, index), so the gradient (and a resumed run) redraws the same mask from the seed.
 */
export function dropoutMask(size: number, attrs: DropoutAttrs): Float32Array {
  const mask = new Float32Array(size);
  const { seed, threshold, scale } = attrs;
  for (let i = 0; i < size; i++) if (hashCounter(seed, i) >>> 8 >= threshold) mask[i] = scale;
  return mask;
}

/** Throws a ConfigError (field `dropout`) unless 0 ≤ p < 1: the one check of `dropout()` and `new Dropout(p)`. */
export function checkDropoutRate(p: number): void {
  if (!(p >= 0 && p < 1)) throw new ConfigError({ field: 'dropout', received: p, expected: 'a number in [0, 1)', hint: 'Pass e.g. 0.1 (0 turns dropout off).' });
}

function checkSeed(seed: number): void {
  if (!(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32))
    throw new ConfigError({ field: 'dropout seed', received: seed, expected: 'an integer in [0, 2³²)', hint: 'Pass e.g. { seed: 42 }, or no seed.' });
}

/** The fused kernel's gradient: the same kernel with the same attributes on dy (dy·mask). */
function registerDropoutGradient(): void {
  if (tf.getGradient(DROPOUT_KERNEL) !== undefined) return;
  tf.registerGradient({
    kernelName: DROPOUT_KERNEL,
    gradFunc: (dy, _saved, attrs) => ({ x: () => tf.engine().runKernel(DROPOUT_KERNEL, { x: dy as tf.Tensor }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor }),
  });
}

/**
 * The mask attributes of one dropout call at rate `p` (> 0): the seed given, else the next of the
 * open `withSeededRandom` scope, else a random one. A kernel that drops values inside it (causal
 * attention's probabilities) draws them here, as {@link dropout} does, so it takes the seed the
 * separate dropout would have taken at that point.
 * @throws {ConfigError} when `p` is outside [0, 1) or the seed is not a 32-bit unsigned integer.
 */
export function dropoutAttrs(p: number, options: DropoutOptions = {}): DropoutAttrs {
  checkDropoutRate(p);
  const seed = options.seed ?? nextScopedSeed() ?? Math.floor(Math.random() * 2 ** 32);
  checkSeed(seed);
  return { seed, threshold: dropoutThreshold(p), scale: Math.fround(1 / (1 - p)) };
}

/** Options of {@link dropout}. */
export interface DropoutOptions {
  /**
   * 32-bit seed of the mask (an integer in [0, 2³²)). Default: the next seed of the open
   * `withSeededRandom` scope (the trainer opens one per step, so a resumed run draws the same
   * masks), else a fresh random one.
   */
  readonly seed?: number;
}

/**
 * Inverted dropout: zero each element with probability `p` and scale the rest by 1/(1−p). The mask
 * is a counter-based hash of (seed, element index): element i is kept when the top 24 bits of
 * murmur3's finalizer of `seed ^ (i + 1)·0x9e3779b9`, as u in [0, 1), are ≥ p; the output is
 * x·(1/(1−p)) there and x·0 elsewhere. The gradient is the same op on dy with the same seed. On a
 * backend with core's fused kernel (the WASM backend after `initRuntime()`) one SIMD pass each way;
 * elsewhere the mask is computed in JS and multiplied, with the same bits.
 *
 * @param input The tensor to drop values of (any shape).
 * @param p Drop probability in [0, 1); 0 returns `input` itself, not a copy.
 * @returns A new tensor the caller disposes (unless it is `input`).
 * @throws {ConfigError} when `p` is outside [0, 1) or the seed is not a 32-bit unsigned integer.
 * @example
 * const y = dropout(x, 0.1, { seed: 42 }); // the same mask for every call with seed 42
 */
export function dropout(input: tf.Tensor, p: number, options: DropoutOptions = {}): tf.Tensor {
  checkDropoutRate(p);
  if (p === 0) return input;
  const attrs = dropoutAttrs(p, options);
  if (input.dtype === 'float32' && activeBackendHasKernels(DROPOUT_KERNEL)) {
    registerDropoutGradient();
    return tf.engine().runKernel(DROPOUT_KERNEL, { x: input }, attrs as unknown as tf.NamedAttrMap) as tf.Tensor;
  }
  // The mask is a constant tensor, so the tape's gradient of this multiply is dy·mask: the same op on dy.
  return tf.tidy(() => tf.mul(input, tf.tensor(dropoutMask(input.size, attrs), input.shape, 'float32')));
}
