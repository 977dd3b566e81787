import type * as tf from '@tensorflow/tfjs-core';
import type { BaseLayer } from './base-layer.js';
import type { Module } from './module.js';

/**
 * The version of the plugin interface this core implements. v2 added adapter-level state
 * ({@link AdapterState}), per-forward adapter inputs ({@link ApplyContext.inputs}), core's default
 * additive merge, and compatibility with any dense base layer by default.
 */
export const PLUGIN_SPECIFICATION_VERSION = 'v2' as const;

/**
 * Inputs for adapters that vary per forward pass, e.g. `{ condition: [{ task: 'qa' }, { task: 'sum' }] }`
 * (one entry per batch row). Passed to `AdapterModel.forward` / `withAdapterInputs`; each adapter
 * reads the keys it knows through {@link ApplyContext.inputs}.
 */
export type AdapterInputs = Readonly<Record<string, unknown>>;

/** `adapter_config.json` as PEFT writes it: snake_case keys, `peft_type` always present. */
export type PeftConfigJson = {
  /** PEFT's method name, which picks the plugin that reads the file, e.g. `LORA` (also DoRA) or `ADALORA`. */
  readonly peft_type: string;
} & Readonly<Record<string, unknown>>;

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
  /** PEFT's `base_model_name_or_path`: the model the adapter was made for (default null); recorded and written back, never checked. */
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
  /** Path of the wrapped module, e.g. `transformer.h.0.attn.c_attn`. */
  readonly modulePath: string;
  /** Name of the adapter being applied. */
  readonly adapterName: string;
  /** The per-forward inputs given to `AdapterModel.withAdapterInputs` / `forward`; `{}` when none. */
  readonly inputs: AdapterInputs;
  /** This adapter's adapter-level object, when its plugin has one. */
  readonly adapterState: AdapterState | undefined;
}

/**
 * The adapter-level object of one adapter (one per adapter name and plugin), owned by
 * `AdapterModel`: created when the adapter is added, disposed with it. It holds what belongs to the
 * adapter as a whole rather than to one layer (PEFT's `model.py` role): AdaLoRA's rank allocator,
 * a hypernetwork's generator. Its variables are saved once per adapter, not per layer.
 */
export interface AdapterState {
  /**
   * Variables saved once for the whole adapter, under exactly these keys in
   * `adapter_model.safetensors` (use a prefix of the plugin's own, e.g. `hyperlora.trunk.weight`,
   * so they never collide with module paths). Default: none.
   */
  namedTensors?(): [string, tf.Variable][];
  /** Optional: tensors to save instead of `namedTensors()`' variables (new tensors; the caller disposes them). */
  tensorsForSave?(): [string, tf.Tensor][];
  /** Optional custom loading of the saved adapter-level tensors (by key); the default checks shapes and assigns. */
  loadTensors?(tensors: ReadonlyMap<string, tf.Tensor>): void;
  /**
   * Called before each forward pass run through `AdapterModel.withAdapterInputs` (inside the caller's
   * scope, so tensors made here take part in the gradient tape and are freed with the caller's
   * `tidy` unless kept). Throw a {@link LoraError} when a required input is missing.
   */
  beginForward?(context: { readonly inputs: AdapterInputs; readonly training: boolean }): void;
  /** Called after the forward pass, also when it threw. */
  endForward?(): void;
  /**
   * Optional: adjust the `adapter_config.json` written when the adapter is saved (AdaLoRA's
   * `rank_pattern` then describes the pruned tensors it saves).
   */
  peftJsonForSave?(json: PeftConfigJson): PeftConfigJson;
  /** Training hooks of the adapter as a whole (e.g. AdaLoRA's rank allocation, a cache invalidated by each step). */
  trainingHooks?(): TrainingHooks;
  /** Free this object's variables and cached tensors. */
  dispose(): void;
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
  /**
   * Optional: the base layer's output (`context.base`) and this adapter's effect on it computed
   * together, e.g. by one fused kernel, or null to decline. Asked only when this adapter is the
   * layer's one active adapter; when it declines (or lacks this method), the layer computes the base
   * and calls {@link AdapterInstance.apply}. Must equal that result up to float32 rounding.
   */
  applyWithBase?(input: tf.Tensor, context: ApplyContext): tf.Tensor | null;
  /**
   * ΔW = merged − base weight as dense [out, in]. The caller disposes it. An adapter whose ΔW
   * depends on per-forward inputs (a hypernetwork) throws a {@link LoraError} saying how to merge
   * (e.g. export a fixed condition first).
   */
  deltaWeight(base: BaseLayer): tf.Tensor2D;
  /**
   * Optional: the merged weight [out, in] from the current weight [out, in] when the merge is not
   * additive (DoRA). Default: `weight + deltaWeight(base)`. The caller disposes both.
   */
  mergeWeight?(weight: tf.Tensor2D, base: BaseLayer): tf.Tensor2D;
  /** Optional inverse of {@link AdapterInstance.mergeWeight}. Default: `weight − deltaWeight(base)`. */
  unmergeWeight?(weight: tf.Tensor2D, base: BaseLayer): tf.Tensor2D;
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
  /**
   * After backward and clipping, before the optimizer step: may read (not keep) the gradients. May
   * return a promise, which `train()` awaits before it goes on (read tensors with `await data()`
   * there: a synchronous read stalls a GPU backend).
   */
  afterBackward?(context: { readonly step: number; readonly gradients: ReadonlyMap<tf.Variable, tf.Tensor> }): void | Promise<void>;
  /**
   * After the optimizer step, while this step's gradients (by variable) are still alive. May return
   * a promise, which `train()` awaits (the gradients stay alive until it settles).
   */
  afterStep?(context: { readonly step: number; readonly gradients: ReadonlyMap<tf.Variable, tf.Tensor> }): void | Promise<void>;
  /**
   * State the hook keeps from step to step that a resumed run needs to continue exactly (AdaLoRA's
   * importance estimates, masks and schedule position). `train()` stores it in its checkpoint file,
   * written atomically with the weights and optimizer state, and keeps it with the last good state
   * in memory. Default: none (the hook is stateless, or its state is not resumed).
   */
  readonly checkpoint?: TrainingHookCheckpoint;
}

/**
 * The state of one training hook at a step boundary, as {@link TrainingHookCheckpoint.state} gives
 * it and {@link TrainingHookCheckpoint.restore} receives it.
 */
export interface TrainingHookState {
  /** Tensors by name (any names; finite values only: a checkpoint with a non-finite one is refused). */
  readonly tensors: Readonly<Record<string, tf.Tensor>>;
  /**
   * Everything else, as a JSON value (objects, arrays, strings, finite numbers, booleans, null).
   * It is stored with `JSON.stringify`, so a value JSON cannot represent does not survive.
   */
  readonly json: unknown;
}

/**
 * How a training hook contributes its state to `train()`'s checkpoints, so that a run resumed from a
 * checkpoint ends exactly as an uninterrupted one.
 *
 * Order on resume: every hook's `restore` runs first, then the weights and then the optimizer
 * state are loaded, so a hook may rebuild variables (e.g. to another shape) before those land in
 * them; `train()` reads the model's trainable variables again after the hooks are restored.
 *
 * @example
 * let calls = 0;
 * const counting: TrainingHooks = {
 *   afterStep: () => { calls += 1; },
 *   checkpoint: {
 *     key: 'my-plugin.counter',
 *     state: () => ({ tensors: {}, json: { calls } }),
 *     restore: (state) => { calls = (state.json as { calls: number }).calls; },
 *   },
 * };
 */
export interface TrainingHookCheckpoint {
  /**
   * Names this hook's state in the checkpoint, unique among the run's hooks and the same from run to
   * run (e.g. `adalora.default`: plugin and adapter name). Letters, digits, `.`, `_`, `-`.
   */
  readonly key: string;
  /**
   * The state now. The tensors are new (e.g. `tf.clone`, which copies nothing) and the caller
   * disposes them; the JSON value must not be changed by the hook afterwards (the trainer keeps it
   * as the last good state without copying it).
   */
  state(): TrainingHookState;
  /**
   * Put back a state `state()` gave, from memory (a rollback to the last good step) or from a
   * checkpoint file (another process). Copy what is kept: the caller disposes the tensors and may
   * reuse the JSON value.
   * @param context.source the checkpoint file, or a description of the in-memory state, to name in errors.
   * @throws {CheckpointError} when the state does not fit this hook (one line naming `source`, the
   * field, what was expected and found, and the fix).
   */
  restore(state: TrainingHookState, context: { readonly source: string }): void;
}

/** What a plugin's training hooks may look at. */
export interface AdapterHookContext<TConfig> {
  /** Name of the adapter the hooks are for, e.g. `default`. */
  readonly adapterName: string;
  /** The adapter's parsed config, as the plugin's `parseConfig` / `fromPeftJson` returned it. */
  readonly config: TConfig;
  /** The adapter instances of this adapter, by module path. */
  instances(): [string, AdapterInstance][];
  /** The adapter's adapter-level object, when its plugin has one. */
  readonly state: AdapterState | undefined;
}

/** Passed to {@link AdapterPlugin.toPeftJson} when an adapter is saved. */
export interface AdapterSaveContext {
  /** The adapter instances being saved, by module path. */
  instances(): [string, AdapterInstance][];
  /** The adapter's adapter-level object, when its plugin has one. */
  readonly state: AdapterState | undefined;
}

/**
 * An adapter plugin (`lora()`, `dora()`, `adalora()`, `hyper()`): validates its config, creates
 * the adapter that wraps a target layer, converts its config to and from PEFT JSON.
 */
export interface AdapterPlugin<TConfig extends AdapterConfigBase = AdapterConfigBase> {
  /** The plugin interface version implemented; `createLoraRegistry` refuses any other than `PLUGIN_SPECIFICATION_VERSION`. */
  readonly specificationVersion: typeof PLUGIN_SPECIFICATION_VERSION;
  /** Always `adapter`: tells adapter plugins from base transforms in a {@link LoraPlugin}. */
  readonly kind: 'adapter';
  /** Registry name, e.g. `lora`. */
  readonly name: string;
  /** The npm package providing it, named in errors when it is missing. */
  readonly packageName: string;
  /** The `peft_type` written to `adapter_config.json`. */
  readonly peftType: string;
  /**
   * What this adapter wraps. Default (absent): any base layer with a dense weight, so every base
   * transform composes unless refused here by name with a reason (e.g. `{ quant: 'needs float weights' }`).
   */
  readonly compatibility?: {
    /** Base transform name → why this adapter cannot wrap its layers; the reason is quoted when a recipe combines them. */
    readonly refusals?: Readonly<Record<string, string>>;
  };
  /** Validate user options (camelCase) and fill PEFT's defaults. @throws {ConfigError} */
  parseConfig(options: unknown): TConfig;
  /** Read an `adapter_config.json` object. @throws {ConfigError} */
  fromPeftJson(json: PeftConfigJson): TConfig;
  /**
   * Write the config as PEFT does. When saving, `context` gives the adapter's instances and state,
   * so a config can describe what was saved (AdaLoRA's `rank_pattern`).
   */
  toPeftJson(config: TConfig, context?: AdapterSaveContext): PeftConfigJson;
  /** Whether a saved config belongs to this plugin (e.g. `LORA` without `use_dora`). */
  claimsPeftConfig(json: PeftConfigJson): boolean;
  /**
   * Optional: create the adapter-level object of a new adapter, before its layers' adapters
   * (`targets` are the layers it will wrap, by module path). Owned and disposed by `AdapterModel`.
   */
  createAdapterState?(args: {
    readonly adapterName: string;
    readonly config: TConfig;
    readonly targets: readonly (readonly [string, Module & BaseLayer])[];
  }): AdapterState;
  /** Create the adapter for one target layer. `index` counts the adapter's targets from 0 (for seeding). */
  createAdapter(args: {
    readonly base: Module & BaseLayer;
    readonly modulePath: string;
    readonly adapterName: string;
    readonly config: TConfig;
    readonly index: number;
    readonly state: AdapterState | undefined;
  }): AdapterInstance;
  /** Training hooks for an active adapter of this plugin (in addition to its state's). */
  trainingHooks?(context: AdapterHookContext<TConfig>): TrainingHooks;
  /**
   * Optional, for `lora inspect`: the rank of one saved module from its tensors' shapes (relative
   * keys). Default: the first dimension of `lora_A.weight`, or null.
   */
  savedRank?(shapes: ReadonlyMap<string, readonly number[]>): number | null;
}

/**
 * A base transform (`quant()`): replaces frozen layers with another layer kind that has the same
 * `forward`, before adapters wrap them.
 */
export interface BaseTransform {
  /** The plugin interface version implemented; `createLoraRegistry` refuses any other than `PLUGIN_SPECIFICATION_VERSION`. */
  readonly specificationVersion: typeof PLUGIN_SPECIFICATION_VERSION;
  /** Always `base-transform`: tells base transforms from adapter plugins in a `LoraPlugin` union. */
  readonly kind: 'base-transform';
  /** Registry name, e.g. `quant`, as listed in a {@link Recipe}'s `transforms`. */
  readonly name: string;
  /** The npm package providing it, named in errors when it is missing. */
  readonly packageName: string;
  /** Whether the layer at `path` should be replaced. */
  shouldTransform(path: string, module: Module & BaseLayer, context: { readonly model: Module }): boolean;
  /** The replacement (any {@link BaseLayer}, so every adapter that does not refuse this transform wraps it). The old layer is disposed by the caller. */
  transform(module: Module & BaseLayer, path: string): Module & BaseLayer;
}

/** One plugin a package provides, as its {@link PluginPackageDescriptor} lists it. */
export interface PluginDescriptor {
  /** Registry name, e.g. `dora`. */
  readonly name: string;
  /** Whether `create` makes an adapter plugin or a base transform (checked against the plugin it makes). */
  readonly kind: 'adapter' | 'base-transform';
  /** The `peft_type`s of saved configs this plugin may read (`[]` for base transforms). */
  readonly peftTypes: readonly string[];
  /** One line on what it does. */
  readonly summary: string;
  /** The factory (`dora`, `quant`, …) with its options; called with none gives the defaults. */
  create(options?: unknown): LoraPlugin;
}

/**
 * What a package provides: the single source of truth for "which package reads this saved
 * adapter", install hints, the CLI's loading and `lora inspect`. Every package with plugins exports
 * one as `pluginPackage`.
 */
export interface PluginPackageDescriptor {
  /** The npm package name, e.g. `@lora/dora`. */
  readonly packageName: string;
  /** Every plugin the package provides, one entry each (names unique within the package). */
  readonly plugins: readonly PluginDescriptor[];
}

/** Anything the registry holds. */
export type LoraPlugin = AdapterPlugin | BaseTransform;

/** One adapter plugin plus zero or more base transforms (QLoRA = `{ adapter: 'lora', transforms: ['quant'] }`). */
export interface Recipe {
  /** Registry name of the adapter plugin, e.g. `lora`. */
  readonly adapter: string;
  /** Registry names of the base transforms applied first, e.g. `['quant']`; each at most once (default none). */
  readonly transforms?: readonly string[];
}
