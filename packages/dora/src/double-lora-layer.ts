import * as tf from '@tensorflow/tfjs-core';
import { LoraAdapter, type AdapterInstance, type ApplyContext } from '@lora/core';

/** One low-rank pair of a {@link DoubleLoraAdapter}. */
export interface LowRankPairOptions {
  /** Rank. */
  readonly r: number;
  /** Scaling numerator: s = alpha / r (or alpha / √r with `useRslora`). */
  readonly alpha: number;
  /** Dropout probability on this pair's input (default 0). */
  readonly dropout?: number;
}

/** Options for {@link DoubleLoraAdapter}. */
export interface DoubleLoraAdapterOptions {
  /** Input size of the wrapped layer. */
  readonly inFeatures: number;
  /** Output size of the wrapped layer. */
  readonly outFeatures: number;
  /** The first pair (A₁, B₁, s₁, dropout₁). */
  readonly first: LowRankPairOptions;
  /** The second pair (A₂, B₂, s₂, dropout₂). */
  readonly second: LowRankPairOptions;
  /** Scale each pair by alpha / √r (default false). */
  readonly useRslora?: boolean;
  /** As LoRA's `initLoraWeights`, for both pairs (default true: A kaiming-uniform, B zeros). */
  readonly init?: boolean | 'gaussian';
  /** Seed; the second pair uses `seed + 2` (default unseeded). */
  readonly seed?: number;
}

/**
 * Two independent LoRA pairs on one layer: `ΔW = s₁·B₁A₁ + s₂·B₂A₂`, each pair with its own rank,
 * alpha and dropout, so the forward adds `s₁·B₁A₁·dropout₁(x) + s₂·B₂A₂·dropout₂(x)`.
 *
 * This has exactly the capacity of one LoRA of rank r₁ + r₂ ({@link DoubleLoraAdapter.toLoraFactors}
 * gives that LoRA); the split is useful for training the pairs differently (their own dropout,
 * their own learning rates through their variables). It is not DoRA's magnitude/direction
 * decomposition.
 *
 * Variables: `lora_A1.weight` [r₁, in], `lora_B1.weight` [out, r₁], `lora_A2.weight` [r₂, in],
 * `lora_B2.weight` [out, r₂]; owned, freed by {@link DoubleLoraAdapter.dispose}.
 *
 * @example
 * const adapter = new DoubleLoraAdapter({ inFeatures: 64, outFeatures: 64, first: { r: 8, alpha: 16 }, second: { r: 2, alpha: 2, dropout: 0.1 } });
 */
export class DoubleLoraAdapter implements AdapterInstance {
  /** The first pair (A₁ = `first.loraA`, B₁ = `first.loraB`, s₁ = `first.scaling`). */
  readonly first: LoraAdapter;
  /** The second pair. */
  readonly second: LoraAdapter;

  constructor(options: DoubleLoraAdapterOptions) {
    const pair = (spec: LowRankPairOptions, seed: number | undefined): LoraAdapter =>
      new LoraAdapter({
        inFeatures: options.inFeatures,
        outFeatures: options.outFeatures,
        r: spec.r,
        alpha: spec.alpha,
        dropout: spec.dropout,
        useRslora: options.useRslora,
        init: options.init,
        seed,
      });
    this.first = pair(options.first, options.seed);
    this.second = pair(options.second, options.seed === undefined ? undefined : options.seed + 2);
  }

  /** `lora_A1.weight`, `lora_B1.weight`, `lora_A2.weight`, `lora_B2.weight`. */
  namedTensors(): [string, tf.Variable][] {
    return [
      ['lora_A1.weight', this.first.loraA],
      ['lora_B1.weight', this.first.loraB],
      ['lora_A2.weight', this.second.loraA],
      ['lora_B2.weight', this.second.loraB],
    ];
  }

  /** `result + s₁·B₁A₁·dropout₁(x) + s₂·B₂A₂·dropout₂(x)`; the caller disposes the result. */
  apply(input: tf.Tensor, result: tf.Tensor, context: ApplyContext): tf.Tensor {
    return tf.tidy(() => this.second.apply(input, this.first.apply(input, result, context), context));
  }

  /** s₁·B₁A₁ + s₂·B₂A₂ [out, in]. The caller disposes it. */
  deltaWeight(): tf.Tensor2D {
    return tf.tidy(() => tf.add(this.first.deltaWeight(), this.second.deltaWeight()));
  }

  /**
   * The equivalent single LoRA pair of rank r₁ + r₂ for scaling 1: `A = [s₁·A₁; s₂·A₂]` [r₁+r₂, in],
   * `B = [B₁ | B₂]` [out, r₁+r₂], so `B·A = s₁·B₁A₁ + s₂·B₂A₂` exactly (up to float rounding).
   * The caller disposes both tensors.
   */
  toLoraFactors(): {
    /** `[s₁·A₁; s₂·A₂]` [r₁+r₂, in], both A factors with their scalings folded in. */
    loraA: tf.Tensor2D;
    /** `[B₁ | B₂]` [out, r₁+r₂], unscaled. */
    loraB: tf.Tensor2D;
  } {
    return tf.tidy(() => ({
      loraA: tf.concat([tf.mul(this.first.loraA, this.first.scaling), tf.mul(this.second.loraA, this.second.scaling)], 0) as tf.Tensor2D,
      loraB: tf.concat([this.first.loraB, this.second.loraB], 1) as tf.Tensor2D,
    }));
  }

  /** Free both pairs' variables. */
  dispose(): void {
    this.first.dispose();
    this.second.dispose();
  }
}
