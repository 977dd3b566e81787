import { ConfigReader, type ConfigJson } from './config-fields.js';

/** BERT hyper-parameters (transformers' `BertConfig`, camelCase). */
export interface BertConfig {
  /** Number of token ids: rows of `word_embeddings` (`vocab_size`, default 30522). */
  readonly vocabSize: number;
  /** Width of the hidden states and embeddings (`hidden_size`, default 768). */
  readonly hiddenSize: number;
  /** Number of encoder layers (`num_hidden_layers`, default 12). */
  readonly numHiddenLayers: number;
  /** Number of attention heads; divides `hiddenSize` (`num_attention_heads`, default 12). */
  readonly numAttentionHeads: number;
  /** Width of each layer's feed-forward (intermediate) layer (`intermediate_size`, default 3072). */
  readonly intermediateSize: number;
  /** Default `gelu` (exact erf). */
  readonly hiddenAct: string;
  /** Dropout probability in [0, 1) on the embeddings and on each dense output before its residual add (`hidden_dropout_prob`, default 0.1). */
  readonly hiddenDropoutProb: number;
  /** Dropout probability in [0, 1) on the attention probabilities (`attention_probs_dropout_prob`, default 0.1). */
  readonly attentionProbsDropoutProb: number;
  /** Rows of the learned position table: the longest input accepted, in tokens (`max_position_embeddings`, default 512). */
  readonly maxPositionEmbeddings: number;
  /** Number of segment (token type) ids: rows of `token_type_embeddings` (`type_vocab_size`, default 2). */
  readonly typeVocabSize: number;
  /** Default 1e-12. */
  readonly layerNormEps: number;
  /** Padding token id (`pad_token_id`; the first when a list; default 0, also when null); kept for `configJson`, unused by the model. */
  readonly padTokenId: number;
  /** Dropout before the classifier (default `hiddenDropoutProb`). */
  readonly classifierDropout: number;
  /** Classes of a sequence classifier: `num_labels`, else the size of `id2label`, else 2. */
  readonly numLabels: number;
  /** The original JSON, kept so unknown keys survive a save. */
  readonly json: ConfigJson;
}

/**
 * Read a BERT `config.json` object with transformers' defaults. Only absolute position embeddings are supported.
 * @throws {ConfigError} naming the first invalid field.
 */
export function parseBertConfig(json: ConfigJson, source = 'config.json'): BertConfig {
  const r = new ConfigReader(json, source);
  const hiddenSize = r.positiveInteger('hidden_size', 768);
  const numAttentionHeads = r.positiveInteger('num_attention_heads', 12);
  r.require(hiddenSize % numAttentionHeads === 0, 'num_attention_heads', `a divisor of hidden_size (${hiddenSize})`);
  const positionType = r.string('position_embedding_type', 'absolute');
  r.require(positionType === 'absolute', 'position_embedding_type', "'absolute' (relative position embeddings are not implemented)");
  const hiddenDropoutProb = r.probability('hidden_dropout_prob', 0.1);
  const id2label = json['id2label'];
  const labelCount = id2label !== null && typeof id2label === 'object' ? Object.keys(id2label).length : 2;
  return {
    vocabSize: r.positiveInteger('vocab_size', 30522),
    hiddenSize,
    numHiddenLayers: r.positiveInteger('num_hidden_layers', 12),
    numAttentionHeads,
    intermediateSize: r.positiveInteger('intermediate_size', 3072),
    hiddenAct: r.activation('hidden_act', 'gelu'),
    hiddenDropoutProb,
    attentionProbsDropoutProb: r.probability('attention_probs_dropout_prob', 0.1),
    maxPositionEmbeddings: r.positiveInteger('max_position_embeddings', 512),
    typeVocabSize: r.positiveInteger('type_vocab_size', 2),
    layerNormEps: r.nonNegativeNumber('layer_norm_eps', 1e-12),
    padTokenId: r.tokenIds('pad_token_id')?.[0] ?? 0,
    classifierDropout: r.probability('classifier_dropout', hiddenDropoutProb),
    numLabels: r.positiveInteger('num_labels', labelCount),
    json,
  };
}

/** The `config.json` object for a BERT config (original keys kept, known keys overwritten). */
export function bertConfigJson(config: BertConfig, architecture: string): Record<string, unknown> {
  const json: Record<string, unknown> = {
    ...config.json,
    architectures: [architecture],
    attention_probs_dropout_prob: config.attentionProbsDropoutProb,
    hidden_act: config.hiddenAct,
    hidden_dropout_prob: config.hiddenDropoutProb,
    hidden_size: config.hiddenSize,
    intermediate_size: config.intermediateSize,
    layer_norm_eps: config.layerNormEps,
    max_position_embeddings: config.maxPositionEmbeddings,
    model_type: 'bert',
    num_attention_heads: config.numAttentionHeads,
    num_hidden_layers: config.numHiddenLayers,
    pad_token_id: config.padTokenId,
    position_embedding_type: 'absolute',
    type_vocab_size: config.typeVocabSize,
    vocab_size: config.vocabSize,
  };
  if (config.numLabels !== 2 && json['id2label'] === undefined) {
    json['id2label'] = Object.fromEntries(Array.from({ length: config.numLabels }, (_, i) => [String(i), `LABEL_${i}`]));
    json['label2id'] = Object.fromEntries(Array.from({ length: config.numLabels }, (_, i) => [`LABEL_${i}`, i]));
  }
  return json;
}
