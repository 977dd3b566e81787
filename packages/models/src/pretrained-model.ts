import type * as tf from '@tensorflow/tfjs-core';
import { Module, type AdapterInputs, type AdapterTargetHints, type TensorModule } from '@lora/core';
import type { KeyValueCache } from './attention.js';

/** A layer slot that an adapter wrapper (`AdapterLayer`, `ModulesToSaveWrapper`) may replace. */
export type LayerSlot = Module & TensorModule;

/** Architecture names (`config.architectures[0]`) this package builds. */
export type ArchitectureName =
  | 'GPT2LMHeadModel'
  | 'GPT2Model'
  | 'LlamaForCausalLM'
  | 'LlamaModel'
  | 'BertModel'
  | 'BertForSequenceClassification';

/**
 * What every model built from a Hugging Face config has: its architecture, PEFT's default targets,
 * its output heads, the rules that map checkpoint keys to parameters, and its `config.json`.
 */
export abstract class PretrainedModel extends Module implements AdapterTargetHints {
  /** `config.architectures[0]`, e.g. `GPT2LMHeadModel`. */
  abstract readonly architecture: ArchitectureName;
  /** `config.model_type`, e.g. `gpt2`. */
  abstract readonly modelType: string;
  /** PEFT's default `target_modules` for this model type. */
  abstract readonly defaultTargetModules: readonly string[];
  /** Output heads, never targeted by `all-linear`. */
  abstract readonly outputHeadPaths: readonly string[];
  /** Prefix of the base model inside task models (`transformer`, `model`, `bert`), as transformers' `base_model_prefix`. */
  abstract readonly basePrefix: string;
  /** Checkpoint keys that are not parameters and are skipped on load (buffers such as `attn.bias`). */
  readonly ignoredCheckpointKeys: readonly RegExp[] = [];
  /** Checkpoint keys of tied parameters (e.g. `lm_head.weight`): accepted on load, not written on save. */
  readonly tiedCheckpointKeys: readonly string[] = [];

  /** The Hugging Face `config.json` object for this model (snake_case keys). */
  abstract configJson(): Record<string, unknown>;
}

/** Options of a decoder's forward pass. */
export interface CausalLmForwardOptions {
  /** [B, past + T] of 1 (attend) and 0 (padding); default all ones. */
  readonly attentionMask?: tf.Tensor;
  /** Cache of earlier keys and values; read and extended in place. */
  readonly cache?: KeyValueCache;
  /** Position ids [B, T] (default past, past+1, …). */
  readonly positionIds?: tf.Tensor;
  /** Per-forward inputs for the adapters of the `AdapterModel` wrapping this model (e.g. a condition per row). */
  readonly adapterInputs?: AdapterInputs;
}

/** A decoder-only language model: token ids [B, T] → next-token logits [B, T, vocab]. */
export abstract class CausalLanguageModel extends PretrainedModel {
  /** Vocabulary size (last axis of the logits). */
  abstract readonly vocabSize: number;
  /** Number of decoder layers (size of a {@link KeyValueCache}). */
  abstract readonly numLayers: number;
  /** Longest sequence the position embedding supports, or null when unbounded (rotary). */
  abstract readonly maxPositions: number | null;
  /** End-of-sequence token ids from the config (may be empty). */
  abstract readonly eosTokenIds: readonly number[];

  /**
   * Next-token logits [B, T, vocab] for int32 ids [B, T]. The caller disposes the result.
   * @throws {ShapeError} on a bad input or mask shape.
   */
  abstract forward(inputIds: tf.Tensor, options?: CausalLmForwardOptions): tf.Tensor;
}
