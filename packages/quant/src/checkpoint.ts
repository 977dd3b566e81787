import * as tf from '@tensorflow/tfjs-core';
import {
  AdapterLayer,
  CheckpointError,
  ConfigError,
  LoraError,
  checkLoadedTensors,
  checkTensorsToSave,
  entryToFloat32,
  isBaseLayer,
  readJsonFile,
  readSafetensorsFile,
  tensorToEntry,
  writeFileAtomic,
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
 * @throws {LoraError} when an adapter is merged into a layer of the base (its weight then holds base +
 * adapter; unmerge first), a 4-bit layer holds a float32 merged weight, or a weight to quantize is not finite.
 * @example
 * const entries = quantizedStateDict(model); // Map<key, SafetensorsEntry>, for writeSafetensorsFile
 */
export function quantizedStateDict(model: Module, options: QuantizedStateDictOptions = {}): Map<string, SafetensorsEntry> {
  const paths = checkpointPaths(model);
  refuseMergedAdapters(model, paths);
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

/**
 * A merged adapter lives in its base layer's weight (re-quantized into the 4-bit bytes in merge mode
 * `requantize`, held in float32 in mode `dequantize`, added to a float weight): saved as the base, it
 * would be applied a second time by the adapter loaded on top. Refused, as in mode `dequantize`.
 */
function refuseMergedAdapters(model: Module, paths: ReadonlyMap<string, string | null>): void {
  const merged: string[] = [];
  for (const [treePath, module] of model.namedModules()) {
    const key = paths.get(treePath);
    if (!(module instanceof AdapterLayer) || key === null || key === undefined || module.mergedAdapters.length === 0) continue;
    merged.push(`"${key}" (${module.mergedAdapters.map((name) => `"${name}"`).join(', ')})`);
  }
  if (merged.length === 0) return;
  const listed = merged.length <= 5 ? merged.join(', ') : `${merged.slice(0, 5).join(', ')} and ${merged.length - 5} more`;
  throw new LoraError(
    `[@lora/quant] Cannot save the base model: adapters are merged into ${listed}, so those weights hold base + adapter and loading the adapter on top would apply it twice; nothing was written. Call unmerge() first, or mergeAndUnload() to save a merged model.`,
    { plugin: '@lora/quant' },
  );
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
  /**
   * Load float weights (biases, layers kept in float) holding NaN or ±Infinity instead of throwing
   * `NonFiniteTensorError` (default false). The quantization statistics (absmax, code tables) must be
   * finite in any case: a non-finite one is a malformed state ({@link QuantStateError}).
   */
  readonly allowNonFinite?: boolean;
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
 * or a 4-bit weight whose module is not a linear layer of matching size (also with `strict: false`);
 * {NonFiniteTensorError} for a float weight holding NaN or ±Infinity (unless `allowNonFinite`);
 * {ConfigError} on an invalid `merge`, `keepOriginalOnMerge` or `computeDtype`.
 */
export function loadQuantizedStateDict(
  model: Module,
  tensors: ReadonlyMap<string, SafetensorsEntry>,
  options: LoadQuantizedOptions = {},
): LoadQuantizedResult {
  const strict = options.strict ?? true;
  const source = options.source ?? 'The 4-bit checkpoint';
  // Checked now: the layers are made after the model has started to change.
  parseQuantOptions({ merge: options.merge, keepOriginalOnMerge: options.keepOriginalOnMerge, computeDtype: options.computeDtype });
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
  // The float tensors that become weights (biases, float parameters): ignored buffers may hold -Infinity masks.
  const weightsToCheck = new Map<string, SafetensorsEntry>();
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
        `[@lora/quant] ${source}: the 4-bit weight "${weightKey}" has shape [${state.shape.join(', ')}] but the layer at "${key}" is [${module.outFeatures}, ${module.inFeatures}] ([out, in]); a 4-bit weight cannot be loaded into a layer of another size, also with { strict: false }. The model was not changed; check that the checkpoint belongs to this architecture (and config).`,
        { plugin: '@lora/quant', mismatched: [{ name: weightKey, expected: [module.outFeatures, module.inFeatures], received: state.shape }] },
      );
    }
    for (const name of tensors.keys()) if (name === weightKey || name.startsWith(`${weightKey}.`)) consumed.add(name);
    let bias: Float32Array | null = null;
    const biasEntry = tensors.get(biasKey);
    if (biasEntry) {
      consumed.add(biasKey);
      weightsToCheck.set(biasKey, biasEntry);
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
    weightsToCheck.set(name, entry);
  }
  for (const key of parameters.keys()) {
    const cut = key.lastIndexOf('.');
    if (replacedKeys.has(cut < 0 ? '' : key.slice(0, cut))) continue;
    if (!tensors.has(key)) missing.push(key);
  }
  assertTensorsFit(
    { missing, unexpected, mismatched },
    {
      plugin: '@lora/quant',
      source,
      target: 'the model',
      strict,
      hint: mismatched.length === 0 ? 'The model was not changed. Pass { strict: false } to load what fits.' : 'The model was not changed; mis-shaped tensors are refused also with { strict: false }: check that the checkpoint belongs to this architecture.',
    },
  );
  checkLoadedTensors(weightsToCheck, { file: source, allowNonFinite: options.allowNonFinite, plugin: '@lora/quant' });

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
 * Files are written atomically, and everything is checked before the first is written: a refused model
 * (merged adapters, non-finite weights, …) writes nothing.
 *
 * @throws {LoraError} when the model has no 4-bit layers, mixes settings, or has an adapter merged into
 * its base (call `unmerge()` first); {NonFiniteTensorError} when a weight to write holds NaN or ±Infinity.
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
  const weightsFile = fileHost().join(directory, MODEL_WEIGHTS_NAME);
  // Before anything is written (the directory included): the 4-bit codes are U8, the biases, float
  // layers and F32 absmax can hold NaN after a diverged run.
  checkTensorsToSave(entries, { file: weightsFile, plugin: '@lora/quant' });
  const host = fileHost();
  await host.mkdir(directory);
  // Each file is atomic, the pair is not: weights first, config.json last, and an old config.json
  // that differs goes before the weights change, so a kill at any point leaves the old checkpoint,
  // the new one, or one without config.json (a clear error), never new weights read under an old
  // config (another quant type, say). A write that fails puts the old config.json back.
  const configFile = host.join(directory, MODEL_CONFIG_NAME);
  const configText = `${JSON.stringify(config, null, 2)}\n`;
  const oldConfig = (await pathExists(configFile)) ? await host.readText(configFile).catch(() => null) : null;
  const replacing = oldConfig !== null && oldConfig !== configText;
  if (replacing) await host.remove(configFile);
  try {
    await writeSafetensorsFile(weightsFile, entries, { format: 'pt' });
  } catch (error) {
    if (replacing) await writeFileAtomic(configFile, oldConfig).catch(() => undefined);
    throw error;
  }
  await writeFileAtomic(configFile, configText);
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
 * @throws {ConfigError} on invalid options; {LoraError} when a weight to quantize is not finite or an
 * adapter is merged into the base; {NonFiniteTensorError} when a float weight to write is not finite.
 * A refused model writes nothing.
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
  /**
   * The settings of the loaded 4-bit layers: `type`, `blockSize` and `doubleQuant` as the tensors' own
   * quant states say (as bitsandbytes reads them, whatever `quantization_config` claims or omits),
   * `computeDtype` and `skipModules` from `quantization_config`, `merge` and `keepOriginalOnMerge` as given.
   */
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
 * The quantization type and block size are read from each tensor's quant state, as bitsandbytes does
 * (`quantization_config` may omit them or disagree); `result.quantConfig` reports them. When loading
 * fails, the model `loadModel` built is disposed.
 *
 * @throws {ConfigError} when `loadModel` is not a function, or `config.json` has no bitsandbytes 4-bit
 * `quantization_config` (naming the file); {CheckpointError} when the weights hold no quant state, do not
 * fit, or mix quantization types, block sizes or double quantization across layers (load those with
 * {@link loadQuantizedStateDict}); {QuantStateError} naming a malformed tensor; {NonFiniteTensorError}
 * for a float weight holding NaN or ±Infinity (unless `allowNonFinite`).
 * @example
 * const { model } = await loadQuantizedModel('out/gpt2-nf4', { loadModel: (config) => createGpt2(config) });
 */
export async function loadQuantizedModel<M extends Module>(directory: string, options: LoadQuantizedModelOptions<M>): Promise<LoadedQuantizedModel<M>> {
  const loadModel = (options as Partial<LoadQuantizedModelOptions<M>> | null | undefined)?.loadModel;
  if (typeof loadModel !== 'function') {
    throw new ConfigError({
      plugin: '@lora/quant',
      field: 'loadModel',
      received: loadModel,
      expected: 'a function (config) => model that builds the unquantized architecture from config.json',
      hint: "Pass e.g. loadQuantizedModel(directory, { loadModel: (config) => createModel(config) }) with createModel from '@lora/models'.",
    });
  }
  const configFile = fileHost().join(directory, MODEL_CONFIG_NAME);
  const config = (await readJsonFile(configFile)) as Record<string, unknown>;
  if (config === null || typeof config !== 'object' || config['quantization_config'] === undefined) {
    throw new ConfigError({
      plugin: '@lora/quant',
      field: 'quantization_config',
      received: undefined,
      expected: 'a bitsandbytes 4-bit quantization_config in config.json',
      hint: `${configFile} describes an unquantized model; load it normally and call quantizeModel().`,
    });
  }
  const declared = fromBitsAndBytesConfig(config['quantization_config'], { source: configFile });
  const tensors = await readWeights(directory);
  if (findQuantizedModules(tensors.keys()).length === 0) {
    throw new CheckpointError(
      `[@lora/quant] ${directory} says it is 4-bit but its weights hold no "*.weight.quant_state.bitsandbytes__*" tensor (saved before bitsandbytes 0.41.3, or a merged float model).`,
      { plugin: '@lora/quant' },
    );
  }
  const source = `The 4-bit checkpoint in ${directory}`;
  const model = await loadModel(config);
  try {
    const result = loadQuantizedStateDict(model, tensors, { ...options, computeDtype: declared.computeDtype, source });
    const quantConfig = loadedQuantConfig(model, declared, source);
    return { ...result, model, config, quantConfig };
  } catch (error) {
    // The model is the caller's only once it is returned.
    model.dispose();
    throw error;
  }
}

/** The settings of a loaded model's 4-bit layers, which must agree (one `QuantConfig` describes them). */
function loadedQuantConfig(model: Module, declared: QuantConfig, source: string): QuantConfig {
  const layers = model.namedModules().filter((pair): pair is [string, QuantLinear] => pair[1] instanceof QuantLinear);
  const describe = (layer: QuantLinear): string =>
    `${layer.quantState.quantType}, blocks of ${layer.quantState.blockSize}, ${layer.quantState.nested ? 'with' : 'without'} double quantization`;
  const [firstPath, first] = layers[0]!;
  for (const [path, layer] of layers) {
    if (describe(layer) !== describe(first)) {
      throw new CheckpointError(
        `[@lora/quant] ${source} mixes 4-bit settings: "${path}" is ${describe(layer)} but "${firstPath}" is ${describe(first)}; one quantization_config cannot describe both. Load such a checkpoint with loadQuantizedStateDict(), which keeps each layer's own state.`,
        { plugin: '@lora/quant' },
      );
    }
  }
  return {
    ...declared,
    type: first.quantState.quantType,
    blockSize: first.quantState.blockSize,
    doubleQuant: first.quantState.nested !== null,
    merge: first.mergeMode,
    keepOriginalOnMerge: first.keepOriginalOnMerge,
  };
}
