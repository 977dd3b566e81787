import * as tf from '@tensorflow/tfjs-core';
import type { BaseLayer } from './base-layer.js';
import { ConfigError, ShapeError } from './errors.js';
import { applyToLastAxis, Linear } from './linear.js';
import { dropout } from './dropout.js';
import { checkLayerSizes } from './layer-sizes.js';
import { lowRankAdd, lowRankAddTakes } from './low-rank-add.js';
import { lowRankLinearTrain, lowRankTrain } from './low-rank-train.js';
import type { AdapterInstance, ApplyContext } from './plugin.js';
import { normalSeed } from './random.js';

/** Options for {@link LoraAdapter}. */
export interface LoraAdapterOptions {
  /** The base layer's `inFeatures`: A is [r, inFeatures]. */
  readonly inFeatures: number;
  /** The base layer's `outFeatures`: B is [outFeatures, r]. */
  readonly outFeatures: number;
  /** Rank of the update, a positive integer (PEFT's `r`). */
  readonly r: number;
  /** Scaling numerator (PEFT's `lora_alpha`): scaling = alpha / r, or alpha / √r with `useRslora`. */
  readonly alpha: number;
  /** Scale by alpha / √r instead of alpha / r (rank-stabilised LoRA, PEFT's `use_rslora`; default false). */
  readonly useRslora?: boolean;
  /** Dropout probability on the adapter's input in training mode, in [0, 1) (PEFT's `lora_dropout`; default 0). */
  readonly dropout?: number;
  /** As `initLoraWeights` in {@link LoraConfig} (default true). */
  readonly init?: boolean | 'gaussian';
  /** Seed for A's initial values (B's, with `init: false`, use `seed + 1`); default unseeded, so each run differs. */
  readonly seed?: number;
}

/**
 * LoRA's two low-rank factors on one layer: A [r, in], B [out, r], scaling s; the layer adds
 * `s · B·A·dropout(x)`, computed as two small matMuls (ΔW is never formed in the forward pass).
 */
export class LoraAdapter implements AdapterInstance {
  /** Rank: the rows of A and the columns of B (PEFT's `r`). */
  readonly r: number;
  /** Scaling numerator (PEFT's `lora_alpha`). */
  readonly alpha: number;
  /** s multiplying B·A·x: alpha / r, or alpha / √r with `useRslora` (PEFT's `scaling`). */
  readonly scaling: number;
  /** Dropout probability on the adapter's input in training mode (0: none). */
  readonly dropout: number;
  /** Factor A [r, in], saved as `lora_A.weight`; kaiming-uniform by default. */
  readonly loraA: tf.Variable;
  /** Factor B [out, r], saved as `lora_B.weight`; zeros by default, so a new adapter changes nothing. */
  readonly loraB: tf.Variable;

  /** @throws {ConfigError} naming the option when a size is not a positive integer, `alpha` is not finite or `dropout` is outside [0, 1). */
  constructor(options: LoraAdapterOptions) {
    // Checked before any tensor exists: r = 0 would make the scaling infinite, and a bad dropout
    // would only surface at the first training step.
    checkLayerSizes(options, ['inFeatures', 'outFeatures', 'r'], "LoraAdapter takes the base layer's sizes and PEFT's r.");
    if (!Number.isFinite(options.alpha)) throw new ConfigError({ field: 'alpha', received: options.alpha, expected: 'a finite number (PEFT\'s lora_alpha)' });
    const dropoutRate = options.dropout ?? 0;
    if (!(dropoutRate >= 0 && dropoutRate < 1)) throw new ConfigError({ field: 'dropout', received: options.dropout, expected: 'a probability in [0, 1)' });
    this.r = options.r;
    this.alpha = options.alpha;
    this.scaling = options.useRslora ? options.alpha / Math.sqrt(options.r) : options.alpha / options.r;
    this.dropout = dropoutRate;
    const init = options.init ?? true;
    const seed = options.seed;
    this.loraA = tf.tidy(() =>
      tf.variable(
        init === 'gaussian'
          ? tf.randomNormal([options.r, options.inFeatures], 0, 1 / options.r, 'float32', normalSeed(seed))
          : // kaiming_uniform_(a=√5) on [r, in]: bound = √3·√(1/3)/√in = 1/√in.
            tf.randomUniform([options.r, options.inFeatures], -1 / Math.sqrt(options.inFeatures), 1 / Math.sqrt(options.inFeatures), 'float32', seed),
      ),
    );
    this.loraB = tf.tidy(() =>
      tf.variable(
        init === false
          ? tf.randomUniform([options.outFeatures, options.r], -1 / Math.sqrt(options.r), 1 / Math.sqrt(options.r), 'float32', seed === undefined ? undefined : seed + 1)
          : tf.zeros([options.outFeatures, options.r]),
      ),
    );
  }

  namedTensors(): [string, tf.Variable][] {
    return [
      ['lora_A.weight', this.loraA],
      ['lora_B.weight', this.loraB],
    ];
  }

  apply(input: tf.Tensor, result: tf.Tensor, context: ApplyContext): tf.Tensor {
    return tf.tidy(() => {
      const x = context.training && this.dropout > 0 ? dropout(input, this.dropout) : input;
      // Generating token by token (no tape, a few rows): one kernel instead of four on WASM.
      const inOneCall = x === input ? lowRankAdd(x, this.loraA, this.loraB, result, this.scaling) : null;
      if (inOneCall !== null) return inOneCall;
      // Training (or longer inputs): one kernel forward and one backward on WASM, rows a block at a time.
      const fused = lowRankTrain(x, this.loraA, this.loraB, result, this.scaling);
      if (fused !== null) return fused;
      // s·(x·Aᵀ)·Bᵀ: scaling the rank-r intermediate rather than the [tokens, out] result is the
      // same product with r/out as many multiplies, forward and backward (exact for the usual
      // power-of-two s = alpha/r; otherwise within float32 rounding of PEFT's order).
      const delta = applyToLastAxis(x, context.base.outFeatures, (m) =>
        tf.matMul(scaled(tf.matMul(m, this.loraA as tf.Tensor2D, false, true), this.scaling), this.loraB as tf.Tensor2D, false, true),
      );
      return tf.add(result, delta);
    });
  }

  /**
   * The base layer (core's `Linear`) and this adapter in one kernel each way where the backend has
   * them (see `lowRankLinearTrain`; with dropout in training, the adapter's dropped input is the
   * kernel's second input); null (the base runs, then {@link LoraAdapter.apply}) for any other
   * base, and for the few rows of token-by-token generation, which {@link LoraAdapter.apply} takes
   * in one call.
   */
  applyWithBase(input: tf.Tensor, context: ApplyContext): tf.Tensor | null {
    const base = context.base;
    if (!(base instanceof Linear) || lowRankAddTakes(input.size / this.loraA.shape[1]!)) return null;
    const adapterInput = context.training && this.dropout > 0 ? () => dropout(input, this.dropout) : undefined;
    return lowRankLinearTrain(input, base, this.loraA, this.loraB, this.scaling, adapterInput);
  }

  deltaWeight(): tf.Tensor2D {
    return tf.tidy(() => tf.mul(tf.matMul(this.loraB as tf.Tensor2D, this.loraA as tf.Tensor2D), this.scaling));
  }

  dispose(): void {
    this.loraA.dispose();
    this.loraB.dispose();
  }
}

/** Check that `base` has the sizes an adapter expects. */
export function checkBaseShape(base: BaseLayer, inFeatures: number, outFeatures: number): void {
  if (base.inFeatures !== inFeatures || base.outFeatures !== outFeatures) {
    throw new ShapeError('[@lora/core] adapter base layer', [outFeatures, inFeatures], [base.outFeatures, base.inFeatures]);
  }
}

/** `x·s`, or `x` itself for s = 1 (no kernel). */
function scaled(x: tf.Tensor, s: number): tf.Tensor {
  return s === 1 ? x : tf.mul(x, s);
}
