import * as tf from '@tensorflow/tfjs-core';
import { Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, ShapeError, type AdapterInputs } from '@lora/core';
import { activationFunction } from './activations.js';
import { bidirectionalAttention } from '@lora/core/internal';
import { attentionBias, mergeHeads, rightPaddedLengths, scaledDotProductAttention, splitHeads } from './attention.js';
import { bertConfigJson, type BertConfig } from './bert-config.js';
import { PACKAGE } from './config-fields.js';
import { normalInit } from './initialization.js';
import { PretrainedModel, type LayerSlot } from './pretrained-model.js';
import { checkIdTensor } from './input-checks.js';

/** Options of a BERT forward pass. */
export interface BertForwardOptions {
  /** [B, T] of 1 (attend) and 0 (padding); default all ones. */
  readonly attentionMask?: tf.Tensor;
  /** Segment ids [B, T] (default all 0). */
  readonly tokenTypeIds?: tf.Tensor;
  /** Position ids [B, T] or [T] (default 0 … T−1). */
  readonly positionIds?: tf.Tensor;
  /** Per-forward inputs for the adapters of the `AdapterModel` wrapping this model. */
  readonly adapterInputs?: AdapterInputs;
}

/** `BertEmbeddings`: word + absolute position + token type, then LayerNorm and dropout. */
export class BertEmbeddings extends Module {
  /** Token embedding [vocabSize, hiddenSize]. */
  readonly word_embeddings: Embedding;
  /** Learned absolute position embedding [maxPositionEmbeddings, hiddenSize]. */
  readonly position_embeddings: Embedding;
  /** Segment embedding [typeVocabSize, hiddenSize], indexed by `tokenTypeIds`. */
  readonly token_type_embeddings: Embedding;
  /** LayerNorm on the summed embeddings (eps `layerNormEps`). */
  LayerNorm: LayerSlot;
  /** Dropout after the LayerNorm, rate `hiddenDropoutProb` (training only). */
  readonly dropout: Dropout;

  constructor(config: BertConfig) {
    super();
    this.word_embeddings = this.registerModule('word_embeddings', new Embedding({ numEmbeddings: config.vocabSize, embeddingDim: config.hiddenSize }));
    this.position_embeddings = this.registerModule(
      'position_embeddings',
      new Embedding({ numEmbeddings: config.maxPositionEmbeddings, embeddingDim: config.hiddenSize }),
    );
    this.token_type_embeddings = this.registerModule('token_type_embeddings', new Embedding({ numEmbeddings: config.typeVocabSize, embeddingDim: config.hiddenSize }));
    this.LayerNorm = this.registerModule('LayerNorm', new LayerNorm({ dim: config.hiddenSize, eps: config.layerNormEps }));
    this.dropout = this.registerModule('dropout', new Dropout(config.hiddenDropoutProb));
  }

  /**
   * Token ids [B, T] → word + position + token-type embeddings, LayerNorm and dropout, [B, T, hiddenSize].
   * `options.tokenTypeIds` defaults to all zeros. The caller disposes the result.
   */
  forward(inputIds: tf.Tensor, options: BertForwardOptions = {}): tf.Tensor {
    return tf.tidy(() => {
      const [batch, time] = inputIds.shape as [number, number];
      const positions = options.positionIds ?? tf.range(0, time, 1, 'int32');
      const types = options.tokenTypeIds ?? tf.zeros([batch, time], 'int32');
      let position = this.position_embeddings.forward(positions);
      if (position.rank === 2) position = tf.expandDims(position, 0);
      const summed = tf.add(tf.add(this.word_embeddings.forward(inputIds), this.token_type_embeddings.forward(types)), position);
      return this.dropout.forward(this.LayerNorm.forward(summed));
    });
  }
}

/** `BertSelfAttention`: `query`, `key`, `value` projections and scaled dot-product attention. */
export class BertSelfAttention extends Module {
  /** Query projection [hiddenSize → hiddenSize] with bias; a default LoRA target (an adapter may replace it). */
  query: LayerSlot;
  /** Key projection [hiddenSize → hiddenSize] with bias (an adapter may replace it). */
  key: LayerSlot;
  /** Value projection [hiddenSize → hiddenSize] with bias; a default LoRA target (an adapter may replace it). */
  value: LayerSlot;
  /** Dropout on the attention probabilities, rate `attentionProbsDropoutProb` (training only). */
  readonly dropout: Dropout;
  private readonly heads: number;

  constructor(config: BertConfig) {
    super();
    const size = config.hiddenSize;
    this.query = this.registerModule('query', new Linear({ inFeatures: size, outFeatures: size }));
    this.key = this.registerModule('key', new Linear({ inFeatures: size, outFeatures: size }));
    this.value = this.registerModule('value', new Linear({ inFeatures: size, outFeatures: size }));
    this.dropout = this.registerModule('dropout', new Dropout(config.attentionProbsDropoutProb));
    this.heads = config.numAttentionHeads;
  }

  /**
   * Multi-head self-attention context [B, T, hiddenSize] (before the output projection); `bias` is
   * the additive padding mask, null for none; `keyLengths`, each sequence's length where that mask
   * is right padding (what it masks, for core's one kernel).
   */
  forward(hidden: tf.Tensor, bias: tf.Tensor | null, keyLengths?: readonly number[] | null): tf.Tensor {
    return tf.tidy(() => {
      const [query, key, value] = [this.query.forward(hidden), this.key.forward(hidden), this.value.forward(hidden)];
      const scale = 1 / Math.sqrt(query.shape[2]! / this.heads);
      const dropout = this.training && this.dropout.p > 0;
      // No mask, or right padding: core's attention in one kernel each way where it has one (WASM),
      // reading q, k, v and writing its output in this layout (no heads split out or merged back),
      // the attention dropout inside it (the mask the separate dropout below would draw there).
      if (bias === null || keyLengths) {
        const options = { heads: this.heads, ...(dropout ? { dropout: this.dropout.p } : {}), ...(keyLengths ? { keyLengths } : {}) };
        const whole = bidirectionalAttention(query, key, value, scale, options);
        if (whole !== null) return whole;
      }
      const q = splitHeads(query, this.heads);
      const k = splitHeads(key, this.heads);
      const v = splitHeads(value, this.heads);
      const attended = scaledDotProductAttention(q, k, v, {
        scale,
        bias,
        dropout: dropout ? (p) => this.dropout.forward(p) : undefined,
      });
      return mergeHeads(attended);
    });
  }
}

/** `BertSelfOutput` / `BertOutput`: dense, dropout, residual add and LayerNorm. */
export class BertResidualOutput extends Module {
  /** Projection back to hiddenSize (from hiddenSize after attention, from intermediateSize after the MLP); an adapter may replace it. */
  dense: LayerSlot;
  /** LayerNorm applied after the residual add (eps `layerNormEps`). */
  LayerNorm: LayerSlot;
  /** Dropout on `dense`'s output before the residual add, rate `hiddenDropoutProb` (training only). */
  readonly dropout: Dropout;

  constructor(config: BertConfig, inFeatures: number) {
    super();
    this.dense = this.registerModule('dense', new Linear({ inFeatures, outFeatures: config.hiddenSize }));
    this.LayerNorm = this.registerModule('LayerNorm', new LayerNorm({ dim: config.hiddenSize, eps: config.layerNormEps }));
    this.dropout = this.registerModule('dropout', new Dropout(config.hiddenDropoutProb));
  }

  /** `LayerNorm(dropout(dense(hidden)) + residual)`: the post-norm residual step after attention and after the intermediate layer. */
  forward(hidden: tf.Tensor, residual: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.LayerNorm.forward(tf.add(this.dropout.forward(this.dense.forward(hidden)), residual)));
  }
}

/** `BertAttention`: self-attention (`self`) and its output block (`output`). */
export class BertAttention extends Module {
  /** The q, k, v projections and multi-head attention (`attention.self` in checkpoint keys). */
  readonly self: BertSelfAttention;
  /** The attention output projection, dropout, residual add and LayerNorm (`BertSelfOutput`). */
  readonly output: BertResidualOutput;

  constructor(config: BertConfig) {
    super();
    this.self = this.registerModule('self', new BertSelfAttention(config));
    this.output = this.registerModule('output', new BertResidualOutput(config, config.hiddenSize));
  }

  /** Self-attention followed by its output projection and residual LayerNorm, [B, T, hiddenSize] → [B, T, hiddenSize]. */
  forward(hidden: tf.Tensor, bias: tf.Tensor | null, keyLengths?: readonly number[] | null): tf.Tensor {
    return tf.tidy(() => this.output.forward(this.self.forward(hidden, bias, keyLengths), hidden));
  }
}

/** `BertIntermediate`: dense to the intermediate size and the activation. */
export class BertIntermediate extends Module {
  /** Up projection hiddenSize → intermediateSize, followed by `hiddenAct` (an adapter may replace it). */
  dense: LayerSlot;
  private readonly activation: (x: tf.Tensor) => tf.Tensor;

  constructor(config: BertConfig) {
    super();
    this.dense = this.registerModule('dense', new Linear({ inFeatures: config.hiddenSize, outFeatures: config.intermediateSize }));
    this.activation = activationFunction(config.hiddenAct, 'hidden_act');
  }

  /** `activation(dense(hidden))`: [B, T, hiddenSize] → [B, T, intermediateSize]. */
  forward(hidden: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.activation(this.dense.forward(hidden)));
  }
}

/** One post-norm encoder layer (`BertLayer`). */
export class BertLayer extends Module {
  /** Self-attention with its residual output block. */
  readonly attention: BertAttention;
  /** The feed-forward up projection and activation. */
  readonly intermediate: BertIntermediate;
  /** The feed-forward down projection intermediateSize → hiddenSize, dropout, residual add and LayerNorm (`BertOutput`). */
  readonly output: BertResidualOutput;

  constructor(config: BertConfig) {
    super();
    this.attention = this.registerModule('attention', new BertAttention(config));
    this.intermediate = this.registerModule('intermediate', new BertIntermediate(config));
    this.output = this.registerModule('output', new BertResidualOutput(config, config.intermediateSize));
  }

  /** One encoder layer: attention, then the intermediate layer and its residual output; `bias` is the additive padding mask (`keyLengths` as {@link BertSelfAttention.forward}'s). */
  forward(hidden: tf.Tensor, bias: tf.Tensor | null, keyLengths?: readonly number[] | null): tf.Tensor {
    return tf.tidy(() => {
      const attended = this.attention.forward(hidden, bias, keyLengths);
      return this.output.forward(this.intermediate.forward(attended), attended);
    });
  }
}

/** `BertEncoder`: the stack of layers (`layer.0`, `layer.1`, …). */
export class BertEncoder extends Module {
  /** The `numHiddenLayers` encoder layers, in order. */
  readonly layer: ModuleList<BertLayer>;

  constructor(config: BertConfig) {
    super();
    this.layer = this.registerModule('layer', new ModuleList(Array.from({ length: config.numHiddenLayers }, () => new BertLayer(config))));
  }

  /** Every layer in order, [B, T, hiddenSize] → the last hidden state; `bias` is the additive padding mask (`keyLengths` as {@link BertSelfAttention.forward}'s). */
  forward(hidden: tf.Tensor, bias: tf.Tensor | null, keyLengths?: readonly number[] | null): tf.Tensor {
    return tf.tidy(() => {
      let out = hidden;
      for (const layer of this.layer) out = layer.forward(out, bias, keyLengths);
      return out;
    });
  }
}

/** `BertPooler`: tanh(dense(hidden state of the first token)). */
export class BertPooler extends Module {
  /** Projection [hiddenSize → hiddenSize] of the first token's hidden state, before the tanh (an adapter may replace it). */
  dense: LayerSlot;

  constructor(config: BertConfig) {
    super();
    this.dense = this.registerModule('dense', new Linear({ inFeatures: config.hiddenSize, outFeatures: config.hiddenSize }));
  }

  /** `tanh(dense(h[:, 0]))`: the first token's hidden state pooled to [B, hiddenSize]. */
  forward(hidden: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const [batch, , size] = hidden.shape as [number, number, number];
      return tf.tanh(this.dense.forward(tf.reshape(tf.slice(hidden, [0, 0, 0], [batch, 1, size]), [batch, size])));
    });
  }
}

function checkInputs(inputIds: tf.Tensor, config: BertConfig, options: BertForwardOptions): void {
  if (inputIds.rank !== 2) throw new ShapeError(`[${PACKAGE}] BERT inputIds`, [null, null], inputIds.shape);
  const [batch, time] = inputIds.shape as [number, number];
  if (time > config.maxPositionEmbeddings) {
    throw new ShapeError(`[${PACKAGE}] BERT sequence longer than max_position_embeddings`, [null, config.maxPositionEmbeddings], inputIds.shape);
  }
  checkIdTensor(inputIds, { name: 'inputIds', size: config.vocabSize, field: 'vocab_size' });
  const { positionIds, tokenTypeIds } = options;
  if (positionIds) {
    // [T] or [1, T] apply to every row; [B, T] gives each row its own. Anything else would broadcast to another batch.
    const fits = (positionIds.rank === 1 && positionIds.shape[0] === time) || (positionIds.rank === 2 && (positionIds.shape[0] === batch || positionIds.shape[0] === 1) && positionIds.shape[1] === time);
    if (!fits) throw new ShapeError(`[${PACKAGE}] BERT positionIds ([T] or [B, T] for inputIds [${batch}, ${time}])`, [batch, time], positionIds.shape);
    checkIdTensor(positionIds, { name: 'positionIds', size: config.maxPositionEmbeddings, field: 'max_position_embeddings' });
  }
  if (tokenTypeIds) {
    if (tokenTypeIds.rank !== 2 || tokenTypeIds.shape[0] !== batch || tokenTypeIds.shape[1] !== time) {
      throw new ShapeError(`[${PACKAGE}] BERT tokenTypeIds (one segment id per input id)`, [batch, time], tokenTypeIds.shape);
    }
    checkIdTensor(tokenTypeIds, { name: 'tokenTypeIds', size: config.typeVocabSize, field: 'type_vocab_size' });
  }
}

/**
 * The BERT encoder (transformers' `BertModel`): embeddings, post-norm encoder layers, and a tanh pooler.
 * `forward` returns the last hidden state [B, T, hidden]; {@link BertModel.forwardWithPooler} also the pooled output.
 */
export class BertModel extends PretrainedModel {
  readonly architecture = 'BertModel' as const;
  readonly modelType = 'bert';
  readonly defaultTargetModules: readonly string[] = ['query', 'value'];
  readonly outputHeadPaths: readonly string[] = [];
  readonly basePrefix = 'bert';
  override readonly ignoredCheckpointKeys: readonly RegExp[] = [/(^|\.)embeddings\.position_ids$/u];
  /** The hyper-parameters this encoder was built from. */
  readonly config: BertConfig;
  /** Word, position and token-type embeddings with their LayerNorm and dropout. */
  readonly embeddings: BertEmbeddings;
  /** The stack of encoder layers. */
  readonly encoder: BertEncoder;
  /** Pooler of the first ([CLS]) token, used by `forwardWithPooler` only (not by `forward`). */
  readonly pooler: BertPooler;

  /** A BERT encoder with transformers' initialisation N(0, 0.02). @param options.seed default 0. */
  constructor(config: BertConfig, options: { seed?: number } = {}) {
    super();
    this.config = config;
    this.embeddings = this.registerModule('embeddings', new BertEmbeddings(config));
    this.encoder = this.registerModule('encoder', new BertEncoder(config));
    this.pooler = this.registerModule('pooler', new BertPooler(config));
    normalInit(this, { seed: options.seed ?? 0, std: () => 0.02 });
  }

  configJson(): Record<string, unknown> {
    return bertConfigJson(this.config, this.architecture);
  }

  /** Last hidden state [B, T, hidden] for ids [B, T]. The caller disposes it. */
  forward(inputIds: tf.Tensor, options: BertForwardOptions = {}): tf.Tensor {
    if (options.adapterInputs !== undefined) return this.withAdapterInputs(options.adapterInputs, () => this.forward(inputIds, { ...options, adapterInputs: undefined }));
    checkInputs(inputIds, this.config, options);
    const [batch, time] = inputIds.shape as [number, number];
    const bias = attentionBias({ queries: time, past: 0, causal: false, attentionMask: options.attentionMask, batch });
    // A right-padded batch: the lengths core's one-kernel attention takes for it.
    const keyLengths = rightPaddedLengths(options.attentionMask);
    try {
      return tf.tidy(() => this.encoder.forward(this.embeddings.forward(inputIds, options), bias, keyLengths));
    } finally {
      bias?.dispose();
    }
  }

  /** The last hidden state and the pooled first-token output [B, hidden]. The caller disposes both. */
  forwardWithPooler(inputIds: tf.Tensor, options: BertForwardOptions = {}): {
    /** Output of the last encoder layer [B, T, hiddenSize], as `forward` returns. */
    lastHiddenState: tf.Tensor;
    /** The pooled first-token output [B, hiddenSize], `tanh(pooler.dense(lastHiddenState[:, 0]))`. */
    poolerOutput: tf.Tensor;
  } {
    const lastHiddenState = this.forward(inputIds, options);
    return { lastHiddenState, poolerOutput: this.pooler.forward(lastHiddenState) };
  }
}

/**
 * BERT with a classification head (transformers' `BertForSequenceClassification`): pooled output →
 * dropout → `classifier` [numLabels]. `forward` returns logits [B, numLabels].
 *
 * @example
 * const model = await loadPretrained('models/bert'); // config.architectures = ['BertForSequenceClassification']
 * const logits = tf.tidy(() => (model as BertForSequenceClassification).forward(ids, { attentionMask }));
 */
export class BertForSequenceClassification extends PretrainedModel {
  readonly architecture = 'BertForSequenceClassification' as const;
  readonly modelType = 'bert';
  readonly defaultTargetModules: readonly string[] = ['query', 'value'];
  readonly outputHeadPaths: readonly string[] = ['classifier'];
  readonly basePrefix = 'bert';
  override readonly ignoredCheckpointKeys: readonly RegExp[] = [/(^|\.)embeddings\.position_ids$/u];
  /** The hyper-parameters this model was built from. */
  readonly config: BertConfig;
  /** The BERT encoder (checkpoint prefix `bert.`). */
  readonly bert: BertModel;
  /** Dropout on the pooled output before `classifier`, rate `classifierDropout` (training only). */
  readonly dropout: Dropout;
  /** Classification head hiddenSize → numLabels with bias; listed in `outputHeadPaths`, so `all-linear` skips it. */
  classifier: LayerSlot;

  /** @param options.seed seed of the initialisation (default 0). */
  constructor(config: BertConfig, options: { seed?: number } = {}) {
    super();
    this.config = config;
    this.bert = this.registerModule('bert', new BertModel(config, options));
    this.dropout = this.registerModule('dropout', new Dropout(config.classifierDropout));
    this.classifier = this.registerModule('classifier', new Linear({ inFeatures: config.hiddenSize, outFeatures: config.numLabels }));
    normalInit(this.classifier, { seed: (options.seed ?? 0) + 7919, std: () => 0.02 });
  }

  /** Number of classes. */
  get numLabels(): number {
    return this.config.numLabels;
  }

  configJson(): Record<string, unknown> {
    return bertConfigJson(this.config, this.architecture);
  }

  /** Classification logits [B, numLabels]. The caller disposes them. */
  forward(inputIds: tf.Tensor, options: BertForwardOptions = {}): tf.Tensor {
    return this.withAdapterInputs(options.adapterInputs, () => tf.tidy(() => {
      const { poolerOutput } = this.bert.forwardWithPooler(inputIds, { ...options, adapterInputs: undefined });
      return this.classifier.forward(this.dropout.forward(poolerOutput));
    }));
  }
}
