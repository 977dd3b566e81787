import * as tf from '@tensorflow/tfjs-core';
import { Module, ShapeError, applyToLastAxis, type BaseLayer } from '@lora/core';
import { PACKAGE } from './config-fields.js';
import { normalSeed } from '@lora/core/internal';

/**
 * A bias-free output projection `logits = x·Wᵀ` with `weight` [vocab, hidden], as transformers'
 * `lm_head`. Given an existing variable it shares it (tied input and output embeddings): the
 * variable is then listed once by `namedParameters()`, under the embedding's path, just as
 * transformers omits a tied `lm_head.weight` from a saved checkpoint.
 *
 * It is a `BaseLayer`, so an adapter can target it explicitly; `all-linear` skips it (it is named in
 * the model's `outputHeadPaths`).
 */
export class OutputHead extends Module implements BaseLayer {
  /** Hidden size: the width of the last axis of `forward`'s input. */
  readonly inFeatures: number;
  /** Vocabulary size: the number of logits per position. */
  readonly outFeatures: number;
  readonly fanInFanOut = false;
  readonly bias: tf.Variable | null = null;
  /** The [outFeatures, inFeatures] ([vocab, hidden]) weight; when `tied`, the embedding's own variable. */
  readonly weight: tf.Variable;
  /** True when `weight` is shared with an embedding. */
  readonly tied: boolean;

  /**
   * @param options.inFeatures hidden size; `outFeatures` vocabulary size.
   * @param options.tiedWeight an embedding's [vocab, hidden] variable to share (default: a new N(0, 0.02) weight).
   */
  constructor(options: { inFeatures: number; outFeatures: number; tiedWeight?: tf.Variable; seed?: number }) {
    super();
    this.inFeatures = options.inFeatures;
    this.outFeatures = options.outFeatures;
    this.tied = options.tiedWeight !== undefined;
    if (options.tiedWeight) {
      const shape = options.tiedWeight.shape;
      if (shape[0] !== options.outFeatures || shape[1] !== options.inFeatures) {
        throw new ShapeError(`[${PACKAGE}] OutputHead tied weight`, [options.outFeatures, options.inFeatures], shape);
      }
      this.weight = this.registerParameter('weight', options.tiedWeight);
    } else {
      const initial = tf.randomNormal([options.outFeatures, options.inFeatures], 0, 0.02, 'float32', normalSeed(options.seed));
      this.weight = this.registerParameter('weight', initial);
      initial.dispose();
    }
  }

  /** Logits [B, T, vocab] from hidden states [B, T, inFeatures]; the same as `forwardWithoutBias` (the tied head has no bias). The caller disposes the result. */
  forward(input: tf.Tensor): tf.Tensor {
    return this.forwardWithoutBias(input);
  }

  forwardWithoutBias(input: tf.Tensor): tf.Tensor {
    this.throwIfDisposed(`[${PACKAGE}] OutputHead`);
    if (input.shape[input.rank - 1] !== this.inFeatures) {
      throw new ShapeError(`[${PACKAGE}] OutputHead input`, [null, this.inFeatures], input.shape);
    }
    return tf.tidy(() => applyToLastAxis(input, this.outFeatures, (x) => tf.matMul(x, this.weight as tf.Tensor2D, false, true)));
  }

  denseWeight(): tf.Tensor2D {
    return tf.clone(this.weight) as tf.Tensor2D;
  }

  assignDenseWeight(weight: tf.Tensor2D): {
    /** Always true: the float32 weight holds the given values exactly. */
    exact: boolean;
    /** Set when `tied`: says the input embedding changed too. */
    note?: string;
  } {
    if (weight.shape[0] !== this.outFeatures || weight.shape[1] !== this.inFeatures) {
      throw new ShapeError(`[${PACKAGE}] OutputHead.assignDenseWeight`, [this.outFeatures, this.inFeatures], weight.shape);
    }
    this.weight.assign(weight);
    return this.tied ? { exact: true, note: 'lm_head is tied to the input embedding, which changed too.' } : { exact: true };
  }

  /** An untied copy with its own variable (for `modules_to_save`). */
  override clone(): OutputHead {
    const copy = new OutputHead({ inFeatures: this.inFeatures, outFeatures: this.outFeatures });
    copy.weight.assign(this.weight);
    copy.weight.trainable = this.weight.trainable;
    copy.training = this.training;
    return copy;
  }
}
