import { ConfigReader, type ConfigJson } from './config-fields.js';

/** Rotary scaling (`rope_scaling`) this package implements. */
export type RopeScaling =
  | {
      /** Position interpolation: every rotary frequency divided by `factor` (`rope_type` / `type`). */
      readonly type: 'linear';
      /** Divisor of the rotary frequencies (`factor`), e.g. 2 to stretch the context twofold. */
      readonly factor: number;
    }
  | {
      /** Llama 3.1's wavelength-dependent scaling (`rope_type` / `type`). */
      readonly type: 'llama3';
      /** Divisor of the low frequencies, those with a wavelength above `originalMaxPositionEmbeddings / lowFreqFactor` (`factor`). */
      readonly factor: number;
      /** Frequencies with a wavelength above `originalMaxPositionEmbeddings / lowFreqFactor` are fully scaled (`low_freq_factor`). */
      readonly lowFreqFactor: number;
      /** Frequencies with a wavelength below `originalMaxPositionEmbeddings / highFreqFactor` are kept; between the two they are blended (`high_freq_factor`). */
      readonly highFreqFactor: number;
      /** Context length, in positions, the model was pre-trained with before scaling (`original_max_position_embeddings`). */
      readonly originalMaxPositionEmbeddings: number;
    };

/** Llama hyper-parameters (transformers' `LlamaConfig`, camelCase). */
export interface LlamaConfig {
  /** Number of token ids: rows of `embed_tokens` and logits per position (`vocab_size`, default 32000). */
  readonly vocabSize: number;
  /** Width of the hidden states and embeddings (`hidden_size`, default 4096). */
  readonly hiddenSize: number;
  /** Width of the SwiGLU MLP's gate and up projections (`intermediate_size`, default 11008). */
  readonly intermediateSize: number;
  /** Number of decoder layers (`num_hidden_layers`, default 32). */
  readonly numHiddenLayers: number;
  /** Number of query heads; a multiple of `numKeyValueHeads` (`num_attention_heads`, default 32). */
  readonly numAttentionHeads: number;
  /** Key/value heads (grouped-query attention); default `numAttentionHeads`. */
  readonly numKeyValueHeads: number;
  /** Default hiddenSize / numAttentionHeads. */
  readonly headDim: number;
  /** Default `silu`. */
  readonly hiddenAct: string;
  /** `max_position_embeddings` (default 2048): kept for `configJson` only; rotary positions are not limited by it. */
  readonly maxPositionEmbeddings: number;
  /** Default 1e-6. */
  readonly rmsNormEps: number;
  /** Default 10000. */
  readonly ropeTheta: number;
  /** Rotary frequency scaling from `rope_scaling`, or null for none (absent, null or `rope_type: 'default'`). */
  readonly ropeScaling: RopeScaling | null;
  /** Bias on q/k/v/o projections (default false). */
  readonly attentionBias: boolean;
  /** Bias on the MLP projections (default false). */
  readonly mlpBias: boolean;
  /** Dropout probability in [0, 1) on the attention probabilities, in training only (`attention_dropout`, default 0). */
  readonly attentionDropout: number;
  /** Share `lm_head.weight` with `model.embed_tokens.weight` (default false). */
  readonly tieWordEmbeddings: boolean;
  /** Beginning-of-sequence token id (`bos_token_id`; the first when a list; default 1, also when null); kept for `configJson`, unused by the model. */
  readonly bosTokenId: number | null;
  /** End-of-sequence token ids (`eos_token_id`, one or a list; default [2]); `generate`'s default stop tokens. */
  readonly eosTokenIds: readonly number[];
  /** The original JSON, kept so unknown keys survive a save. */
  readonly json: ConfigJson;
}

function parseRopeScaling(r: ConfigReader): RopeScaling | null {
  const raw = r.json['rope_scaling'];
  if (raw === undefined || raw === null) return null;
  r.require(typeof raw === 'object' && !Array.isArray(raw), 'rope_scaling', 'an object or null');
  const scaling = new ConfigReader(raw as ConfigJson, `${r.source} rope_scaling`);
  const type = scaling.has('rope_type') ? scaling.string('rope_type') : scaling.string('type', 'default');
  if (type === 'default') return null;
  if (type === 'linear') return { type, factor: scaling.positiveNumber('factor') };
  if (type === 'llama3') {
    return {
      type,
      factor: scaling.positiveNumber('factor'),
      lowFreqFactor: scaling.positiveNumber('low_freq_factor'),
      highFreqFactor: scaling.positiveNumber('high_freq_factor'),
      originalMaxPositionEmbeddings: scaling.positiveInteger('original_max_position_embeddings'),
    };
  }
  r.require(false, 'rope_scaling', "a rope_type of 'default', 'linear' or 'llama3'", `Got rope_type ${JSON.stringify(type)}.`);
  return null;
}

/**
 * Read a Llama `config.json` object with transformers' defaults.
 * @throws {ConfigError} naming the first invalid field.
 */
export function parseLlamaConfig(json: ConfigJson, source = 'config.json'): LlamaConfig {
  const r = new ConfigReader(json, source);
  const hiddenSize = r.positiveInteger('hidden_size', 4096);
  const numAttentionHeads = r.positiveInteger('num_attention_heads', 32);
  const numKeyValueHeads = r.positiveInteger('num_key_value_heads', numAttentionHeads);
  r.require(numAttentionHeads % numKeyValueHeads === 0, 'num_key_value_heads', `a divisor of num_attention_heads (${numAttentionHeads})`);
  const headDim = r.positiveInteger('head_dim', Math.floor(hiddenSize / numAttentionHeads));
  r.require(headDim % 2 === 0, 'head_dim', 'an even number (rotary embeddings rotate pairs)');
  r.require(r.has('head_dim') || hiddenSize % numAttentionHeads === 0, 'num_attention_heads', `a divisor of hidden_size (${hiddenSize})`);
  return {
    vocabSize: r.positiveInteger('vocab_size', 32000),
    hiddenSize,
    intermediateSize: r.positiveInteger('intermediate_size', 11008),
    numHiddenLayers: r.positiveInteger('num_hidden_layers', 32),
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    hiddenAct: r.activation('hidden_act', 'silu'),
    maxPositionEmbeddings: r.positiveInteger('max_position_embeddings', 2048),
    rmsNormEps: r.nonNegativeNumber('rms_norm_eps', 1e-6),
    ropeTheta: r.positiveNumber('rope_theta', 10000),
    ropeScaling: parseRopeScaling(r),
    attentionBias: r.boolean('attention_bias', false),
    mlpBias: r.boolean('mlp_bias', false),
    attentionDropout: r.probability('attention_dropout', 0),
    tieWordEmbeddings: r.boolean('tie_word_embeddings', false),
    bosTokenId: r.tokenIds('bos_token_id')?.[0] ?? 1,
    eosTokenIds: r.tokenIds('eos_token_id') ?? [2],
    json,
  };
}

/** The `config.json` object for a Llama config (original keys kept, known keys overwritten). */
export function llamaConfigJson(config: LlamaConfig, architecture: string): Record<string, unknown> {
  return {
    ...config.json,
    architectures: [architecture],
    attention_bias: config.attentionBias,
    attention_dropout: config.attentionDropout,
    bos_token_id: config.bosTokenId,
    eos_token_id: config.eosTokenIds.length === 1 ? config.eosTokenIds[0] : [...config.eosTokenIds],
    head_dim: config.headDim,
    hidden_act: config.hiddenAct,
    hidden_size: config.hiddenSize,
    intermediate_size: config.intermediateSize,
    max_position_embeddings: config.maxPositionEmbeddings,
    mlp_bias: config.mlpBias,
    model_type: 'llama',
    num_attention_heads: config.numAttentionHeads,
    num_hidden_layers: config.numHiddenLayers,
    num_key_value_heads: config.numKeyValueHeads,
    rms_norm_eps: config.rmsNormEps,
    rope_theta: config.ropeTheta,
    tie_word_embeddings: config.tieWordEmbeddings,
    vocab_size: config.vocabSize,
  };
}
