import * as tf from '@tensorflow/tfjs-core';
import {
  AdapterLayer,
  CheckpointError,
  ConfigError,
  LoraError,
  entryToFloat32,
  isBaseLayer,
  readJsonFile,
  readSafetensorsFile,
  tensorToEntry,
  writeJsonAtomic,
  writeSafetensorsFile,
  type BaseLayer,
  type Module,
  type SafetensorsEntry,
} from '@lora/core';
import { assertTensorsFit, fileHost, pathExists } from '@lora/core/internal';
import { findQuantizedModules, quantStateFromEntries, quantStateToEntries } from './bnb-format.js';
import { fromBitsAndBytesConfig, parseQuantOptions, toBitsAndBytesConfig, type QuantConfig, type QuantMergeMode, type QuantOptions } from './quant-config.js';
import { shouldQuantize } from './quant-plugin.js';
import { QuantLinear } from './quant-layer.js';
import { quantizeWeight, type QuantState } from './quant-state.js';
import { baseParametersByKey, checkpointPaths } from './tree-paths.js';

/** File names of a Hugging Face model directory. */
export const MODEL_CONFIG_NAME = 'config.json';
/** The weights file (single shard). */
export const MODEL_WEIGHTS_NAME = 'model.safetensors';
/** The index of a sharded checkpoint. */
export const MODEL_WEIGHTS_INDEX_NAME = 'model.safetensors.index.json';

/** Options for {@link quantizedStateDict}. */
export interface QuantizedStateDictOptions {
  /**
   * Also quantize, on the fly, the float linear layers these options select (as {@link quantizeModel}
   * would), without changing the model. Default: only layers that are already 4-bit are written as such.
   */
  readonly quantize?: QuantOptions;
}

/**
 * The base model's state dict with 4-bit layers in bitsandbytes' serialization, keyed as transformers
 * keys it: each 4-bit layer at `P` gives `P.weight` (U8 [ceil(n/2), 1]), `P.weight.absmax`,
 * `P.weight.quant_map`, `P.weight.nested_absmax`, `P.weight.nested_quant_map`,
 * `P.weight.quant_state.bitsandbytes__<type>` and `P.bias`; every other parameter is F32. Adapter layers
 * and modules_to_save wrappers are looked through (their base is saved under the plain path; adapter
 * tensors are left out, as `save_pretrained` of the base model does).
 *
 * @throws {LoraError} when a 4-bit layer holds a float32 merged weight (unmerge first), or a weight to
 * quantize is not finite.
 * @example
 * const entries = quantizedStateDict(model); // Map<key, SafetensorsEntry>, for writeSafetensorsFile
 */
export function quantizedStateDict(model: Module, options: QuantizedStateDictOptions = {}): Map<string, SafetensorsEntry> {
  const paths = checkpointPaths(model);
  const entries = new Map<string, SafetensorsEntry>();
  const quantizeConfig = options.quantize ? parseQuantOptions(options.quantize) : null;
  const quantizedKeys = new Set<string>();
  for (const [treePath, module] of model.namedModules()) {
    const key = paths.get(treePath);
    if (key === null || key === undefined || treePath === '') continue;
    let state: QuantState;
    if (module instanceof QuantLinear) {
      if (module.holdsFloatWeight) {
        throw new LoraError(
          `[@lora/quant] Cannot save "${key}": it holds a float32 merged weight (merge mode 'dequantize'). Call unmerge() first, or mergeAndDequantize() for a float model.`,
          { plugin: '@lora/quant' },
        );
      }
      state = module.quantState;
    } else if (quantizeConfig && isBaseLayer(module) && !(module instanceof AdapterLayer) && shouldQuantize(key, module, model, quantizeConfig)) {
      const dense = module.denseWeight();
      try {
        state = quantizeWeight(dense.dataSync() as Float32Array, [module.outFeatures, module.inFeatures], {
          type: quantizeConfig.type,
          blockSize: quantizeConfig.blockSize,
          doubleQuant: quantizeConfig.doubleQuant,
          name: key,
        });
      } finally {
        dense.dispose();
      }
    } else {
      continue;
    }
    quantizedKeys.add(key);
    for (const [name, entry] of quantStateToEntries(state, key)) entries.set(name, entry);
  }
  for (const [key, variable] of baseParametersByKey(model)) {
    const cut = key.lastIndexOf('.');
    // The float weight of a layer written in 4 bits above.
    if (key.slice(cut + 1) === 'weight' && quantizedKeys.has(cut < 0 ? '' : key.slice(0, cut))) continue;
    entries.set(key, tensorToEntry(variable));
  }
  return entries;
}

/** Options for {@link loadQuantizedStateDict}. */
export interface LoadQuantizedOptions {
  /** Throw on missing, unexpected or mis-shaped tensors (default true). */
  readonly strict?: boolean;
  /** Merge behaviour of the created 4-bit layers (see {@link QuantOptions.merge}). */
  readonly merge?: QuantMergeMode;
  /** See {@link QuantOptions.keepOriginalOnMerge} (default true). */
  readonly keepOriginalOnMerge?: boolean;
  /** Recorded on the layers (from `bnb_4bit_compute_dtype`). */
  readonly computeDtype?: QuantConfig['computeDtype'];
  /** What the tensors came from, named in errors (default `The 4-bit checkpoint`), e.g. the directory. */
  readonly source?: string;
}

/** What {@link loadQuantizedStateDict} did. */
export interface LoadQuantizedResult {
  /** Module paths now holding a {@link QuantLinear}. */
  readonly quantizedModules: readonly string[];
  /** Checkpoint keys assigned to float parameters. */
  readonly loaded: readonly string[];
  /** Base parameters the checkpoint lacks (only when not strict). */
  readonly missing: readonly string[];
  /** Checkpoint keys the model has no place for (only when not strict). */
  readonly unexpected: readonly string[];
  /**
   * Checkpoint keys skipped on purpose because the model lists them in `ignoredCheckpointKeys` (buffers
   * such as GPT-2's `attn.bias`) or `tiedCheckpointKeys` (e.g. `lm_head.weight`), as `@lora/models`' models do.
   */
  readonly ignored: readonly string[];
}

/**
 * Load a state dict into a module tree by parameter path (keys as the model's own parameter paths; no
 * base-model prefix is added or removed), creating 4-bit layers directly from
 * bitsandbytes-serialized weights: every layer with a `P.weight.quant_state.bitsandbytes__*` key is
 * replaced by a {@link QuantLinear} built from its packed bytes (no float32 weight is made), with bias
 * `P.bias`; every other tensor is assigned to the parameter of the same name (F32, F16 and BF16 read as
 * float32). Everything is validated before the model is changed. Adapter layers are looked through.
 *
 * @throws {QuantStateError} naming the tensor for a malformed quant state (wrong absmax length, unknown
 * quant type, bad JSON blob, …); {CheckpointError} for missing/unexpected/mis-shaped tensors when strict
 * or a 4-bit weight whose module is not a linear layer of matching size.
 */
export function loadQuantizedStateDict(
  model: Module,
  tensors: ReadonlyMap<string, SafetensorsEntry>,
  options: LoadQuantizedOptions = {},
): LoadQuantizedResult {
  const strict = options.strict ?? true;
  const paths = checkpointPaths(model);
  const treePathOf = new Map<string, string>();
  // Parents come before children in namedModules, so an adapter layer's base_layer wins its path.
  for (const [treePath] of model.namedModules()) {
    const key = paths.get(treePath);
    if (key !== null && key !== undefined) treePathOf.set(key, treePath);
  }

  // Phase 1: parse and check everything.
  const plans: { key: string; treePath: string; module: Module & BaseLayer; state: QuantState; bias: Float32Array | null }[] = [];
  const consumed = new Set<string>();
  const mismatched: { name: string; expected: readonly number[]; received: readonly number[] }[] = [];
  const unexpected: string[] = [];
  const missing: string[] = [];
  for (const key of findQuantizedModules(tensors.keys())) {
    const weightKey = key === '' ? 'weight' : `${key}.weight`;
    const biasKey = key === '' ? 'bias' : `${key}.bias`;
    const treePath = treePathOf.get(key);
    const module = treePath === undefined ? undefined : model.getSubmodule(treePath);
    if (treePath === undefined || treePath === '' || !module || !isBaseLayer(module)) {
      throw new CheckpointError(
        `[@lora/quant] The checkpoint has a 4-bit weight "${weightKey}" but the model has no linear layer at "${key}"${treePath === '' ? ' (the root module cannot be replaced)' : ''}. Check that the checkpoint belongs to this architecture.`,
        { plugin: '@lora/quant', unexpected: [weightKey] },
      );
    }
    const state = quantStateFromEntries(tensors, key);
    if (state.shape[0] !== module.outFeatures || state.shape[1] !== module.inFeatures) {
      throw new CheckpointError(
        `[@lora/quant] The 4-bit weight "${weightKey}" has shape [${state.shape.join(', ')}] but the layer at "${key}" is [${module.outFeatures}, ${module.inFeatures}] ([out, in]).`,
        { plugin: '@lora/quant', mismatched: [{ name: weightKey, expected: [module.outFeatures, module.inFeatures], received: state.shape }] },
      );
    }
    for (const name of tensors.keys()) if (name === weightKey || name.startsWith(`${weightKey}.`)) consumed.add(name);
    let bias: Float32Array | null = null;
    const biasEntry = tensors.get(biasKey);
    if (biasEntry) {
      consumed.add(biasKey);
      bias = entryToFloat32(biasEntry, biasKey);
      if (bias.length !== module.outFeatures) mismatched.push({ name: biasKey, expected: [module.outFeatures], received: biasEntry.shape });
    } else if (module.bias) {
      missing.push(biasKey);
    }
    plans.push({ key, treePath, module, state, bias });
  }
  const replacedKeys = new Set(plans.map((plan) => plan.key));
  const parameters = baseParametersByKey(model);
  const assignments: [tf.Variable, SafetensorsEntry, string][] = [];
  const hints = model as Module & { readonly ignoredCheckpointKeys?: readonly RegExp[]; readonly tiedCheckpointKeys?: readonly string[] };
  const ignored: string[] = [];
  for (const [name, entry] of tensors) {
    if (consumed.has(name)) continue;
    const variable = parameters.get(name);
    if (!variable && (hints.ignoredCheckpointKeys?.some((pattern) => pattern.test(name)) || hints.tiedCheckpointKeys?.includes(name))) {
      ignored.push(name);
      continue;
    }
    if (!variable) {
      unexpected.push(name);
      continue;
    }
    if (entry.shape.length !== variable.shape.length || entry.shape.some((size, i) => size !== variable.shape[i])) {
      mismatched.push({ name, expected: variable.shape, received: entry.shape });
      continue;
    }
    assignments.push([variable, entry, name]);
  }
  for (const key of parameters.keys()) {
    const cut = key.lastIndexOf('.');
    if (replacedKeys.has(cut < 0 ? '' : key.slice(0, cut))) continue;
    if (!tensors.has(key)) missing.push(key);
  }
  assertTensorsFit(
    { missing, unexpected, mismatched },
    { plugin: '@lora/quant', source: options.source ?? 'The 4-bit checkpoint', target: 'the model', strict, hint: 'The model was not changed. Pass { strict: false } to load what fits.' },
  );

  // Phase 2: apply.
  for (const plan of plans) {
    const bias = plan.bias ? tf.tensor1d(plan.bias, 'float32') : null;
    let layer: QuantLinear;
    try {
      layer = new QuantLinear(plan.state, {
        bias: bias ?? plan.module.bias,
        merge: options.merge,
        keepOriginalOnMerge: options.keepOriginalOnMerge,
        computeDtype: options.computeDtype,
        name: plan.key,
        sourceFanInFanOut: plan.module instanceof QuantLinear ? plan.module.sourceFanInFanOut : plan.module.fanInFanOut,
      });
    } finally {
      bias?.dispose();
    }
    model.setSubmodule(plan.treePath, layer);
    plan.module.dispose();
  }
  for (const [variable, entry, name] of assignments) {
    tf.tidy(() => variable.assign(tf.tensor(entryToFloat32(entry, name), variable.shape, 'float32')));
  }
  return {
    quantizedModules: plans.map((plan) => plan.key),
    loaded: assignments.map(([, , name]) => name),
    missing,
    unexpected,
    ignored,
  };
}

function quantConfigOfModel(model: Module, skipModules: readonly string[] | null): QuantConfig {
  const layers = model.namedModules().filter((pair): pair is [string, QuantLinear] => pair[1] instanceof QuantLinear);
  if (layers.length === 0) {
    throw new LoraError('[@lora/quant] The model has no 4-bit layers. Quantize it first: quantizeModel(model) or transforms: [\'quant\'].', {
      plugin: '@lora/quant',
    });
  }
  const first = layers[0]![1];
  for (const [path, layer] of layers) {
    if (layer.quantState.quantType !== first.quantState.quantType || (layer.quantState.nested !== null) !== (first.quantState.nested !== null)) {
      throw new LoraError(
        `[@lora/quant] "${path}" is ${layer.quantState.quantType}${layer.quantState.nested ? ' with' : ' without'} double quantization but "${first.name || layers[0]![0]}" is ${first.quantState.quantType}${first.quantState.nested ? ' with' : ' without'}; transformers' quantization_config describes one setting per model.`,
        { plugin: '@lora/quant' },
      );
    }
  }
  return {
    type: first.quantState.quantType,
    blockSize: first.quantState.blockSize,
    doubleQuant: first.quantState.nested !== null,
    computeDtype: first.computeDtype,
    skipModules,
    merge: first.mergeMode,
    keepOriginalOnMerge: first.keepOriginalOnMerge,
  };
}

/** Options for {@link saveQuantizedModel}. */
export interface SaveQuantizedModelOptions {
  /**
   * The model's `config.json` object (architecture fields); `quantization_config` is added to it.
   * Default: `model.configJson()` when the model has one (as `@lora/models`' models), else `{}`.
   */
  readonly config?: Readonly<Record<string, unknown>>;
  /** Written as `llm_int8_skip_modules` (default null). */
  readonly skipModules?: readonly string[] | null;
}

/**
 * Save a 4-bit model as transformers saves a bitsandbytes model: `model.safetensors` from
 * {@link quantizedStateDict} (metadata `format: pt`) and `config.json` with `quantization_config`.
 * Files are written atomically.
 *
 * @throws {LoraError} when the model has no 4-bit layers or mixes settings.
 * @example
 * await saveQuantizedModel(model, 'out/gpt2-nf4', { config: gpt2Config });
 */
export async function saveQuantizedModel(model: Module, directory: string, options: SaveQuantizedModelOptions = {}): Promise<void> {
  const quantConfig = quantConfigOfModel(model, options.skipModules ?? null);
  await writeModelDirectory(directory, quantizedStateDict(model), { ...(options.config ?? configJsonOf(model)), quantization_config: toBitsAndBytesConfig(quantConfig) });
}

function configJsonOf(model: Module): Record<string, unknown> {
  const candidate = model as Module & { configJson?: () => Record<string, unknown> };
  return typeof candidate.configJson === 'function' ? candidate.configJson() : {};
}

async function writeModelDirectory(directory: string, entries: Map<string, SafetensorsEntry>, config: Record<string, unknown>): Promise<void> {
  await fileHost().mkdir(directory);
  await writeSafetensorsFile(fileHost().join(directory, MODEL_WEIGHTS_NAME), entries, { format: 'pt' });
  await writeJsonAtomic(fileHost().join(directory, MODEL_CONFIG_NAME), config);
}

/** Options for {@link saveQuantizedPretrained}: the quantization options plus the model's config. */
export interface SaveQuantizedPretrainedOptions extends QuantOptions {
  /** The `config.json` object; default `model.configJson()` when the model has one (as `@lora/models`' models), else `{}`. */
  readonly config?: Readonly<Record<string, unknown>>;
}

/**
 * Write a 4-bit checkpoint of a float model without changing it: the linear layers `options` select are
 * quantized on the fly (layers already 4-bit are written as they are), then saved as
 * {@link saveQuantizedModel} does. transformers' `from_pretrained` of such a directory gives a
 * bitsandbytes 4-bit model; {@link loadQuantizedModel} reads it back.
 *
 * @throws {ConfigError} on invalid options; {LoraError} when a weight is not finite.
 * @example
 * await saveQuantizedPretrained(model, 'out/gpt2-nf4', { type: 'nf4', doubleQuant: true });
 */
export async function saveQuantizedPretrained(model: Module, directory: string, options: SaveQuantizedPretrainedOptions = {}): Promise<void> {
  const { config, ...quantOptions } = options;
  const quantConfig = parseQuantOptions(quantOptions);
  const entries = quantizedStateDict(model, { quantize: quantOptions });
  await writeModelDirectory(directory, entries, { ...(config ?? configJsonOf(model)), quantization_config: toBitsAndBytesConfig(quantConfig) });
}

/** Options for {@link loadQuantizedModel}. */
export interface LoadQuantizedModelOptions<M extends Module> extends Omit<LoadQuantizedOptions, 'computeDtype'> {
  /**
   * Build the (unquantized) architecture from `config.json`, e.g. with `@lora/models`. Its linear
   * weights are replaced by the checkpoint's 4-bit layers, so their initial values do not matter.
   */
  readonly loadModel: (config: Readonly<Record<string, unknown>>) => M | Promise<M>;
}

/** What {@link loadQuantizedModel} returns. */
export interface LoadedQuantizedModel<M extends Module> extends LoadQuantizedResult {
  /** The model `loadModel` built, with the checkpoint loaded: layers stored 4-bit replaced in place by {@link QuantLinear}s, other parameters assigned. */
  readonly model: M;
  /** The whole `config.json`. */
  readonly config: Readonly<Record<string, unknown>>;
  /** Its `quantization_config`, read. */
  readonly quantConfig: QuantConfig;
}

async function readWeights(directory: string): Promise<Map<string, SafetensorsEntry>> {
  const single = fileHost().join(directory, MODEL_WEIGHTS_NAME);
  if (await pathExists(single)) return new Map((await readSafetensorsFile(single)).tensors);
  const indexFile = fileHost().join(directory, MODEL_WEIGHTS_INDEX_NAME);
  const index = (await readJsonFile(indexFile)) as { weight_map?: Record<string, string> };
  if (!index.weight_map || typeof index.weight_map !== 'object') {
    throw new CheckpointError(`[@lora/quant] ${indexFile} has no weight_map.`, { plugin: '@lora/quant' });
  }
  const tensors = new Map<string, SafetensorsEntry>();
  for (const shard of new Set(Object.values(index.weight_map))) {
    for (const [name, entry] of (await readSafetensorsFile(fileHost().join(directory, shard))).tensors) tensors.set(name, entry);
  }
  return tensors;
}

/**
 * Load a bitsandbytes 4-bit model directory (`config.json` with `quantization_config` +
 * `model.safetensors` or a sharded index) straight into a quantized model: `loadModel` builds the
 * architecture, then {@link loadQuantizedStateDict} puts 4-bit layers in place from the packed bytes.
 *
 * @throws {ConfigError} when `config.json` has no bitsandbytes 4-bit `quantization_config`;
 * {CheckpointError} when the weights hold no quant state or do not fit; {QuantStateError} naming a malformed tensor.
 * @example
 * const { model } = await loadQuantizedModel('out/gpt2-nf4', { loadModel: (config) => createGpt2(config) });
 */
export async function loadQuantizedModel<M extends Module>(directory: string, options: LoadQuantizedModelOptions<M>): Promise<LoadedQuantizedModel<M>> {
  const config = (await readJsonFile(fileHost().join(directory, MODEL_CONFIG_NAME))) as Record<string, unknown>;
  if (config === null || typeof config !== 'object' || config['quantization_config'] === undefined) {
    throw new ConfigError({
      plugin: '@lora/quant',
      field: 'quantization_config',
      received: undefined,
      expected: 'a bitsandbytes 4-bit quantization_config in config.json',
      hint: `${fileHost().join(directory, MODEL_CONFIG_NAME)} describes an unquantized model; load it normally and call quantizeModel().`,
    });
  }
  const quantConfig = fromBitsAndBytesConfig(config['quantization_config']);
  const tensors = await readWeights(directory);
  if (findQuantizedModules(tensors.keys()).length === 0) {
    throw new CheckpointError(
      `[@lora/quant] ${directory} says it is 4-bit but its weights hold no "*.weight.quant_state.bitsandbytes__*" tensor (saved before bitsandbytes 0.41.3, or a merged float model).`,
      { plugin: '@lora/quant' },
    );
  }
  const model = await options.loadModel(config);
  const result = loadQuantizedStateDict(model, tensors, { ...options, computeDtype: quantConfig.computeDtype, source: `The 4-bit checkpoint in ${directory}` });
  return { ...result, model, config, quantConfig };
}
