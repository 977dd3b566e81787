import * as tf from '@tensorflow/tfjs-core';
import type { BaseLayer } from './base-layer.js';
import { ShapeError } from './errors.js';
import { applyToLastAxis, Linear } from './linear.js';
import { dropout } from './dropout.js';
import { lowRankAdd, lowRankAddTakes } from './low-rank-add.js';
import { lowRankLinearTrain, lowRankTrain } from './low-rank-train.js';
import type { AdapterInstance, ApplyContext } from './plugin.js';
import { normalSeed } from './random.js';

/** Options for {@link LoraAdapter}. */
export interface LoraAdapterOptions {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly r: number;
  readonly alpha: number;
  readonly useRslora?: boolean;
  readonly dropout?: number;
  /** As `initLoraWeights` in {@link LoraConfig} (default true). */
  readonly init?: boolean | 'gaussian';
  readonly seed?: number;
}

/**
 * LoRA's two low-rank factors on one layer: A [r, in], B [out, r], scaling s; the layer adds
 * `s · B·A·dropout(x)`, computed as two small matMuls (ΔW is never formed in the forward pass).
 */
export class LoraAdapter implements AdapterInstance {
  readonly r: number;
  readonly alpha: number;
  readonly scaling: number;
  readonly dropout: number;
  readonly loraA: tf.Variable;
  readonly loraB: tf.Variable;

  constructor(options: LoraAdapterOptions) {
    this.r = options.r;
    this.alpha = options.alpha;
    this.scaling = options.useRslora ? options.alpha / Math.sqrt(options.r) : options.alpha / options.r;
    this.dropout = options.dropout ?? 0;
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
