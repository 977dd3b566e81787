import * as tf from '@tensorflow/tfjs-core';
import { LoraError, ShapeError } from './errors.js';
import { checkLayerSizes } from './layer-sizes.js';
import { Module } from './module.js';
import { normalSeed } from './random.js';
import { layerNorm } from './layer-norm.js';
import { rmsNorm } from './rms-norm.js';
import { checkDropoutRate, dropout } from './dropout.js';

/** A lookup table `weight` [numEmbeddings, embeddingDim], as `torch.nn.Embedding`. */
export class Embedding extends Module {
  /** Number of rows, i.e. valid ids are 0 … numEmbeddings − 1 (e.g. the vocabulary size; PyTorch's `num_embeddings`). */
  readonly numEmbeddings: number;
  /** Length of each row, the size of the output's last axis (PyTorch's `embedding_dim`). */
  readonly embeddingDim: number;
  /** The float32 table parameter `weight` [numEmbeddings, embeddingDim]. */
  readonly weight: tf.Variable;

  /** Initialised N(0, 1) like PyTorch; checkpoints usually overwrite it. @throws {ConfigError} when a size is not a positive integer. */
  constructor(options: { numEmbeddings: number; embeddingDim: number; seed?: number }) {
    super();
    checkLayerSizes(options, ['numEmbeddings', 'embeddingDim'], 'Embedding takes the number of rows (e.g. vocab_size) and their length.');
    this.numEmbeddings = options.numEmbeddings;
    this.embeddingDim = options.embeddingDim;
    const initial = tf.randomNormal([options.numEmbeddings, options.embeddingDim], 0, 1, 'float32', normalSeed(options.seed));
    this.weight = this.registerParameter('weight', initial);
    initial.dispose();
  }

  /**
   * Rows of `weight` for integer ids of any shape; output shape [...ids.shape, embeddingDim].
   * @throws {LoraError} naming the id and the table's size when an id is out of range (on the backends that check: cpu, wasm).
   */
  forward(ids: tf.Tensor): tf.Tensor {
    this.throwIfDisposed('[@lora/core] Embedding');
    try {
      return tf.tidy(() => {
        const flat = tf.reshape(ids.dtype === 'int32' ? ids : tf.cast(ids, 'int32'), [-1]);
        return tf.reshape(tf.gather(this.weight, flat), [...ids.shape, this.embeddingDim]);
      });
    } catch (error) {
      // The backend's own check, in its kernel's words; said here in the model's terms, with the likely cause.
      const outOfRange = error instanceof Error ? /GatherV2: the index value (-?\d+) is not in \[0, \d+\]/u.exec(error.message) : null;
      if (!outOfRange) throw error;
      throw new LoraError(
        `[@lora/core] Embedding: token id ${outOfRange[1]} is out of range: the table has ${this.numEmbeddings} rows (ids 0 to ${this.numEmbeddings - 1}). Check that the tokenizer belongs to the model (its vocab_size).`,
        { cause: error },
      );
    }
  }

  override clone(): Embedding {
    const copy = new Embedding({
      numEmbeddings: this.numEmbeddings,
      embeddingDim: this.embeddingDim,
    });
    copy.weight.assign(this.weight);
    copy.weight.trainable = this.weight.trainable;
    return copy;
  }
}

/** Layer normalisation over the last axis with `weight` and `bias` [dim], as `torch.nn.LayerNorm`. */
export class LayerNorm extends Module {
  /** Size of the normalised last axis (PyTorch's `normalized_shape`). */
  readonly dim: number;
  /** Added to the variance before the square root, for stability; default 1e-5 as in PyTorch. */
  readonly eps: number;
  /** The scale parameter `weight` [dim], initialised to ones. */
  readonly weight: tf.Variable;
  /** The shift parameter `bias` [dim], initialised to zeros. */
  readonly bias: tf.Variable;

  constructor(options: { dim: number; eps?: number }) {
    super();
    this.dim = options.dim;
    this.eps = options.eps ?? 1e-5;
    // registerParameter copies into a variable; tidy frees the initial values.
    this.weight = tf.tidy(() => this.registerParameter('weight', tf.ones([options.dim])));
    this.bias = tf.tidy(() => this.registerParameter('bias', tf.zeros([options.dim])));
  }

  /** Normalise over the last axis (mean 0, variance 1, `eps` added), then scale by `weight` and shift by `bias`; the caller disposes the result. */
  forward(input: tf.Tensor): tf.Tensor {
    this.throwIfDisposed('[@lora/core] LayerNorm');
    if (input.shape[input.rank - 1] !== this.dim) throw new ShapeError('[@lora/core] LayerNorm input', [null, this.dim], input.shape);
    return tf.tidy(() => layerNorm(input, this.weight, this.bias, this.eps));
  }
}

/** Root-mean-square normalisation with `weight` [dim] (Llama's `LlamaRMSNorm`). */
export class RMSNorm extends Module {
  /** Size of the normalised last axis (the model's hidden size). */
  readonly dim: number;
  /** Added to the mean square before the square root, for stability; default 1e-6 as Llama's `rms_norm_eps`. */
  readonly eps: number;
  /** The scale parameter `weight` [dim], initialised to ones. */
  readonly weight: tf.Variable;

  constructor(options: { dim: number; eps?: number }) {
    super();
    this.dim = options.dim;
    this.eps = options.eps ?? 1e-6;
    this.weight = tf.tidy(() => this.registerParameter('weight', tf.ones([options.dim])));
  }

  /** `input / sqrt(mean(input²) + eps) · weight` over the last axis; the caller disposes the result. */
  forward(input: tf.Tensor): tf.Tensor {
    this.throwIfDisposed('[@lora/core] RMSNorm');
    if (input.shape[input.rank - 1] !== this.dim) throw new ShapeError('[@lora/core] RMSNorm input', [null, this.dim], input.shape);
    return rmsNorm(input, this.weight, this.eps);
  }
}

/** Inverted dropout with probability `p` ({@link dropout}), active only in training mode. */
export class Dropout extends Module {
  /** Probability of zeroing each element in training mode, in [0, 1); 0 makes the layer a no-op. */
  readonly p: number;

  constructor(p: number) {
    super();
    checkDropoutRate(p);
    this.p = p;
  }

  /** In training mode, zero each element with probability `p` and scale the rest by 1/(1−p); in eval mode (or `p` = 0) the input itself is returned, not a copy. */
  forward(input: tf.Tensor): tf.Tensor {
    if (!this.training || this.p === 0) return input;
    return dropout(input, this.p);
  }
}
