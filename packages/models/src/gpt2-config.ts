import { ConfigReader, type ConfigJson } from './config-fields.js';

/** GPT-2 hyper-parameters (transformers' `GPT2Config`, camelCase). */
export interface Gpt2Config {
  /** Number of token ids: rows of `wte` and logits per position (`vocab_size`, default 50257). */
  readonly vocabSize: number;
  /** Maximum sequence length (learned position table size). */
  readonly nPositions: number;
  /** Hidden size. */
  readonly nEmbd: number;
  /** Number of transformer blocks (`n_layer`, default 12). */
  readonly nLayer: number;
  /** Number of attention heads; divides `nEmbd` (`n_head`, default 12). */
  readonly nHead: number;
  /** MLP width (default 4·nEmbd). */
  readonly nInner: number;
  /** Default `gelu_new`. */
  readonly activationFunction: string;
  /** Dropout probability in [0, 1) on the attention and MLP outputs before each residual add (`resid_pdrop`, default 0.1). */
  readonly residPdrop: number;
  /** Dropout probability in [0, 1) on the summed token and position embeddings (`embd_pdrop`, default 0.1). */
  readonly embdPdrop: number;
  /** Dropout probability in [0, 1) on the attention probabilities (`attn_pdrop`, default 0.1). */
  readonly attnPdrop: number;
  /** Default 1e-5. */
  readonly layerNormEpsilon: number;
  /** Divide scores by √headDim (default true). */
  readonly scaleAttnWeights: boolean;
  /** Also divide scores by layer index + 1 (default false). */
  readonly scaleAttnByInverseLayerIdx: boolean;
  /** Share `lm_head.weight` with `transformer.wte.weight` (default true). */
  readonly tieWordEmbeddings: boolean;
  /** Beginning-of-sequence token id (`bos_token_id`; the first when a list), or null when absent; kept for `configJson`, unused by the model. */
  readonly bosTokenId: number | null;
  /** End-of-sequence token ids (`eos_token_id`, one or a list), empty when absent; `generate`'s default stop tokens. */
  readonly eosTokenIds: readonly number[];
  /** The original JSON, kept so unknown keys survive a save. */
  readonly json: ConfigJson;
}

/**
 * Read a GPT-2 `config.json` object, with transformers' defaults for absent fields.
 * @throws {ConfigError} naming the first invalid field.
 */
export function parseGpt2Config(json: ConfigJson, source = 'config.json'): Gpt2Config {
  const r = new ConfigReader(json, source);
  const nEmbd = r.positiveInteger('n_embd', 768);
  const nHead = r.positiveInteger('n_head', 12);
  r.require(nEmbd % nHead === 0, 'n_head', `a divisor of n_embd (${nEmbd})`);
  return {
    vocabSize: r.positiveInteger('vocab_size', 50257),
    nPositions: r.positiveInteger('n_positions', 1024),
    nEmbd,
    nLayer: r.positiveInteger('n_layer', 12),
    nHead,
    nInner: r.positiveInteger('n_inner', 4 * nEmbd),
    activationFunction: r.activation('activation_function', 'gelu_new'),
    residPdrop: r.probability('resid_pdrop', 0.1),
    embdPdrop: r.probability('embd_pdrop', 0.1),
    attnPdrop: r.probability('attn_pdrop', 0.1),
    layerNormEpsilon: r.nonNegativeNumber('layer_norm_epsilon', 1e-5),
    scaleAttnWeights: r.boolean('scale_attn_weights', true),
    scaleAttnByInverseLayerIdx: r.boolean('scale_attn_by_inverse_layer_idx', false),
    tieWordEmbeddings: r.boolean('tie_word_embeddings', true),
    bosTokenId: r.tokenIds('bos_token_id')?.[0] ?? null,
    eosTokenIds: r.tokenIds('eos_token_id') ?? [],
    json,
  };
}

/** The `config.json` object for a GPT-2 config (original keys kept, known keys overwritten). */
export function gpt2ConfigJson(config: Gpt2Config, architecture: string): Record<string, unknown> {
  return {
    ...config.json,
    activation_function: config.activationFunction,
    architectures: [architecture],
    attn_pdrop: config.attnPdrop,
    bos_token_id: config.bosTokenId,
    embd_pdrop: config.embdPdrop,
    eos_token_id: config.eosTokenIds.length === 1 ? config.eosTokenIds[0] : config.eosTokenIds.length === 0 ? null : [...config.eosTokenIds],
    layer_norm_epsilon: config.layerNormEpsilon,
    model_type: 'gpt2',
    n_embd: config.nEmbd,
    n_head: config.nHead,
    n_inner: config.nInner === 4 * config.nEmbd && (config.json['n_inner'] ?? null) === null ? null : config.nInner,
    n_layer: config.nLayer,
    n_positions: config.nPositions,
    resid_pdrop: config.residPdrop,
    scale_attn_by_inverse_layer_idx: config.scaleAttnByInverseLayerIdx,
    scale_attn_weights: config.scaleAttnWeights,
    tie_word_embeddings: config.tieWordEmbeddings,
    vocab_size: config.vocabSize,
  };
}
