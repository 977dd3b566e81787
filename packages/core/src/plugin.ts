import type * as tf from '@tensorflow/tfjs-core';
import type { BaseLayer } from './base-layer.js';
import type { Module } from './module.js';

/** The version of the plugin interface this core implements. */
export const PLUGIN_SPECIFICATION_VERSION = 'v1' as const;

/** `adapter_config.json` as PEFT writes it: snake_case keys, `peft_type` always present. */
export type PeftConfigJson = { readonly peft_type: string } & Readonly<Record<string, unknown>>;

/** Module selection shared by every adapter config (PEFT's field names in camelCase). */
export interface TargetSelection {
  /** List (exact name or `.`-suffix match), regex string (full match), `all-linear`, or null for the model's default. */
  readonly targetModules: readonly string[] | string | null;
  /** Same matching rules as `targetModules`; wins over it. */
  readonly excludeModules: readonly string[] | string | null;
  /** Only these layer indices (with list `targetModules`). */
  readonly layersToTransform: number | readonly number[] | null;
  /** The ModuleList name that holds the layers, e.g. `h` or `layers`. */
  readonly layersPattern: string | readonly string[] | null;
  /** Modules trained and saved in full (e.g. a classification head). */
  readonly modulesToSave: readonly string[] | null;
}

/** Fields every adapter config has. */
export interface AdapterConfigBase extends TargetSelection {
  /** Which biases train: none, all of the model's, or those of targeted layers. */
  readonly bias: 'none' | 'all' | 'lora_only';
  /** PEFT's task type (`CAUSAL_LM`, `SEQ_CLS`, …) or null. */
  readonly taskType: string | null;
  readonly baseModelNameOrPath: string | null;
  /** True: the adapter is frozen. */
  readonly inferenceMode: boolean;
  /** Keys of a loaded `adapter_config.json` this plugin does not interpret, written back unchanged. */
  readonly extraPeftFields: Readonly<Record<string, unknown>>;
}

/** Passed to {@link AdapterInstance.apply}. */
export interface ApplyContext {
  /** The wrapped layer. */
  readonly base: BaseLayer;
  /** True in training mode (dropout active). */
  readonly training: boolean;
}

/**
 * One adapter (one name) on one wrapped layer, created by an adapter plugin. It owns its
 * variables and frees them in `dispose`.
 */
export interface AdapterInstance {
  /**
   * The variables saved for this adapter at this module, keyed by their name relative to the
   * module path as PEFT saves them (`lora_A.weight`, `lora_magnitude_vector`, `lora_E`).
   */
  namedTensors(): [string, tf.Variable][];
  /** Add this adapter's effect to `result` (the output so far, base included) and return the new output. */
  apply(input: tf.Tensor, result: tf.Tensor, context: ApplyContext): tf.Tensor;
  /** ΔW = merged − base weight as dense [out, in]. The caller disposes it. */
  deltaWeight(base: BaseLayer): tf.Tensor2D;
  /** The merged weight [out, in] from the current weight [out, in]. The caller disposes both. */
  mergeWeight(weight: tf.Tensor2D, base: BaseLayer): tf.Tensor2D;
  /** Inverse of {@link AdapterInstance.mergeWeight}. */
  unmergeWeight(weight: tf.Tensor2D, base: BaseLayer): tf.Tensor2D;
  /**
   * Optional: the tensors to save instead of {@link AdapterInstance.namedTensors}' variables, under the
   * same keys (AdaLoRA saves only the triplets it kept). New tensors; the caller disposes them.
   */
  tensorsForSave?(): [string, tf.Tensor][];
  /**
   * Optional custom loading (AdaLoRA resizes to the saved rank). Receives the saved tensors for this
   * module by relative key; the default checks each shape and assigns.
   */
  loadTensors?(tensors: ReadonlyMap<string, tf.Tensor>): void;
  /** Free this adapter's variables. */
  dispose(): void;
}

/** Hooks a plugin adds to training. All optional; `step` is the 1-based optimizer step being computed or just applied. */
export interface TrainingHooks {
  /** An extra loss term, computed inside the gradient tape (e.g. AdaLoRA's orthogonal regulariser). */
  extraLoss?(context: { readonly step: number }): tf.Scalar | null;
  /** After backward and clipping, before the optimizer step: may read (not keep) the gradients. */
  afterBackward?(context: { readonly step: number; readonly gradients: ReadonlyMap<tf.Variable, tf.Tensor> }): void;
  /** After the optimizer step, while this step's gradients (by variable) are still alive. */
  afterStep?(context: { readonly step: number; readonly gradients: ReadonlyMap<tf.Variable, tf.Tensor> }): void;
}

/** What a plugin's training hooks may look at. */
export interface AdapterHookContext<TConfig> {
  readonly adapterName: string;
  readonly config: TConfig;
  /** The adapter instances of this adapter, by module path. */
  instances(): [string, AdapterInstance][];
}

/**
 * An adapter plugin (`lora()`, `dora()`, `adalora()`, `hyper()`): validates its config, creates
 * the adapter that wraps a target layer, converts its config to and from PEFT JSON.
 */
export interface AdapterPlugin<TConfig extends AdapterConfigBase = AdapterConfigBase> {
  readonly specificationVersion: 'v1';
  readonly kind: 'adapter';
  /** Registry name, e.g. `lora`. */
  readonly name: string;
  /** The npm package providing it, named in errors when it is missing. */
  readonly packageName: string;
  /** The `peft_type` written to `adapter_config.json`. */
  readonly peftType: string;
  /** Base transforms this adapter can wrap (e.g. `['quant']`), with reasons for known refusals. */
  readonly compatibility: {
    readonly transforms: readonly string[];
    readonly refusals?: Readonly<Record<string, string>>;
  };
  /** Validate user options (camelCase) and fill PEFT's defaults. @throws {ConfigError} */
  parseConfig(options: unknown): TConfig;
  /** Read an `adapter_config.json` object. @throws {ConfigError} */
  fromPeftJson(json: PeftConfigJson): TConfig;
  /**
   * Write the config as PEFT does. When saving, `context` gives the adapter's instances, so a
   * config can describe what was saved (AdaLoRA's `rank_pattern`).
   */
  toPeftJson(config: TConfig, context?: { readonly instances: () => [string, AdapterInstance][] }): PeftConfigJson;
  /** Whether a saved config belongs to this plugin (e.g. `LORA` without `use_dora`). */
  claimsPeftConfig(json: PeftConfigJson): boolean;
  /** Create the adapter for one target layer. */
  createAdapter(args: {
    readonly base: Module & BaseLayer;
    readonly modulePath: string;
    readonly adapterName: string;
    readonly config: TConfig;
  }): AdapterInstance;
  /** Training hooks for an active adapter of this plugin. */
  trainingHooks?(context: AdapterHookContext<TConfig>): TrainingHooks;
}

/**
 * A base transform (`quant()`): replaces frozen layers with another layer kind that has the same
 * `forward`, before adapters wrap them.
 */
export interface BaseTransform {
  readonly specificationVersion: 'v1';
  readonly kind: 'base-transform';
  readonly name: string;
  readonly packageName: string;
  /** Whether the layer at `path` should be replaced. */
  shouldTransform(path: string, module: Module & BaseLayer, context: { readonly model: Module }): boolean;
  /** The replacement. The old layer is disposed by the caller. */
  transform(module: Module & BaseLayer, path: string): Module & BaseLayer;
}

/** Anything the registry holds. */
export type LoraPlugin = AdapterPlugin | BaseTransform;

/** One adapter plugin plus zero or more base transforms (QLoRA = `{ adapter: 'lora', transforms: ['quant'] }`). */
export interface Recipe {
  readonly adapter: string;
  readonly transforms?: readonly string[];
}
