import type * as tf from '@tensorflow/tfjs-core';
import { AdapterLayer } from './adapter-layer.js';
import { AdapterModel, wrappingUndo } from './adapter-model.js';
import { camelToSnake } from './config-helpers.js';
import { ConfigError, LoraError, SafetensorsError } from './errors.js';
import { checkLoadedTensors, checkTensorsToSave } from './finite.js';
import { fileHost } from './file-host.js';
import { parseJsonText, pathExists, readJsonFile, readSafetensorsFile, writeFileAtomic } from './files.js';
import type { Module } from './module.js';
import type { PeftConfigJson } from './plugin.js';
import type { LoraRegistry } from './registry.js';
import { entryToTensor, parseSafetensors, serializeSafetensors, tensorToEntry, tensorToEntryAsync, type SafetensorsEntry, type SafetensorsFile } from './safetensors.js';
import { assertTensorsFit, compareTensorShapes } from './tensor-fit.js';

/** File names PEFT uses. */
export const ADAPTER_CONFIG_NAME = 'adapter_config.json';
/** The adapter weights file PEFT writes and reads beside `adapter_config.json`. */
export const ADAPTER_WEIGHTS_NAME = 'adapter_model.safetensors';
const PREFIX = 'base_model.model.';

/**
 * The tensors of one adapter under the names PEFT saves them with (adapter name stripped,
 * `base_model.model.` prefix), as variables (not copied).
 */
export function adapterStateDict(adapterModel: AdapterModel, adapterName: string): Map<string, tf.Variable> {
  const { config } = adapterModel.adapterConfig(adapterName);
  const state = new Map<string, tf.Variable>();
  // Adapter-level variables (a hypernetwork's generator) are saved once, under their own keys.
  for (const [key, variable] of adapterModel.adapterState(adapterName)?.namedTensors?.() ?? []) state.set(key, variable);
  for (const [modulePath, instance] of adapterModel.adapterInstances(adapterName)) {
    for (const [key, variable] of instance.namedTensors()) state.set(`${PREFIX}${modulePath}.${key}`, variable);
  }
  for (const [modulePath, wrapper] of adapterModel.modulesToSaveWrappers()) {
    const copy = wrapper.copy(adapterName);
    if (!copy) continue;
    for (const [name, variable] of copy.namedParameters()) state.set(`${PREFIX}${modulePath}.${name}`, variable);
  }
  if (config.bias !== 'none') {
    const model = adapterModel.model as Module;
    for (const [name, variable] of model.namedParameters()) {
      if (!name.endsWith('.bias') || /(^|\.)(modules_to_save|original_module)\./u.test(name)) continue;
      if (config.bias === 'lora_only') {
        const owner = name.slice(0, -'.base_layer.bias'.length);
        if (!name.endsWith('.base_layer.bias')) continue;
        const layer = model.getSubmodule(owner);
        if (!(layer instanceof AdapterLayer) || !layer.adapter(adapterName)) continue;
      }
      state.set(`${PREFIX}${name}`, variable);
    }
  }
  return state;
}

/** The `adapter_config.json` object PEFT would write for an adapter. */
export function adapterPeftConfig(adapterModel: AdapterModel, adapterName: string): PeftConfigJson {
  const { plugin, config, targetModules } = adapterModel.adapterConfig(adapterName);
  const json = {
    ...plugin.toPeftJson(config, { instances: () => adapterModel.adapterInstances(adapterName), state: adapterModel.adapterState(adapterName) }),
  } as Record<string, unknown>;
  json['target_modules'] = targetModules;
  const state = adapterModel.adapterState(adapterName);
  return state?.peftJsonForSave ? state.peftJsonForSave(json as PeftConfigJson) : (json as PeftConfigJson);
}

/**
 * The tensors an adapter's weights file holds, by key: its variables, with those a plugin saves in
 * another form (AdaLoRA's pruned triplets) replaced; `made` are the replacements, made for the save,
 * which the caller disposes.
 */
function tensorsToSave(adapterModel: AdapterModel, name: string): { tensors: Map<string, tf.Tensor>; made: tf.Tensor[] } {
  const tensors = new Map<string, tf.Tensor>(adapterStateDict(adapterModel, name));
  const made: tf.Tensor[] = [];
  try {
    for (const [key, tensor] of adapterModel.adapterState(name)?.tensorsForSave?.() ?? []) {
      made.push(tensor);
      tensors.set(key, tensor);
    }
    for (const [modulePath, instance] of adapterModel.adapterInstances(name)) {
      for (const [key, tensor] of instance.tensorsForSave?.() ?? []) {
        made.push(tensor);
        tensors.set(`${PREFIX}${modulePath}.${key}`, tensor);
      }
    }
  } catch (error) {
    for (const tensor of made) tensor.dispose();
    throw error;
  }
  return { tensors, made };
}

// The two files from the weights' entries and the config (checked finite first).
function adapterFiles(entries: Map<string, SafetensorsEntry>, config: PeftConfigJson): Map<string, Uint8Array> {
  checkTensorsToSave(entries, { file: ADAPTER_WEIGHTS_NAME });
  return new Map([
    [ADAPTER_WEIGHTS_NAME, serializeSafetensors(entries, { format: 'pt' })],
    [ADAPTER_CONFIG_NAME, new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`)],
  ]);
}

/**
 * An adapter's two PEFT files as bytes, by file name ({@link ADAPTER_CONFIG_NAME} and
 * {@link ADAPTER_WEIGHTS_NAME}): what {@link saveAdapter} writes, without a file system, so a
 * browser can store or upload them. F32 tensors, metadata `{"format": "pt"}`. Reads the weights
 * synchronously: on a GPU backend (webgl, webgpu) prefer {@link serializeAdapterAsync}, which does
 * not stall the page.
 *
 * @throws {NonFiniteTensorError} when a weight holds NaN or ±Infinity: such an adapter is never saved.
 * @example
 * const files = serializeAdapter(adapterModel);
 * await loadAdapter(otherAdapterModel, { files });
 */
export function serializeAdapter(adapterModel: AdapterModel, options: { adapterName?: string } = {}): Map<string, Uint8Array> {
  const name = options.adapterName ?? 'default';
  const config = adapterPeftConfig(adapterModel, name);
  const { tensors, made } = tensorsToSave(adapterModel, name);
  try {
    return adapterFiles(new Map([...tensors].map(([key, tensor]) => [key, tensorToEntry(tensor)])), config);
  } finally {
    for (const tensor of made) tensor.dispose();
  }
}

/**
 * {@link serializeAdapter}, reading the weights asynchronously (`await tensor.data()`): on a GPU
 * backend the page keeps running while they download, where a synchronous read waits for all queued
 * GPU work (and tfjs's webgpu backend reads synchronously through a canvas). The files hold the
 * weights as they were when it was called.
 *
 * @throws {NonFiniteTensorError} when a weight holds NaN or ±Infinity: such an adapter is never saved.
 * @example
 * const files = await serializeAdapterAsync(adapterModel);
 * await loadAdapter(otherAdapterModel, { files });
 */
export async function serializeAdapterAsync(adapterModel: AdapterModel, options: { adapterName?: string } = {}): Promise<Map<string, Uint8Array>> {
  const name = options.adapterName ?? 'default';
  const config = adapterPeftConfig(adapterModel, name);
  const { tensors, made } = tensorsToSave(adapterModel, name);
  try {
    // Every read starts before the first wait, so the weights are read as they are now.
    const entries = await Promise.all([...tensors].map(async ([key, tensor]) => [key, await tensorToEntryAsync(tensor)] as const));
    return adapterFiles(new Map(entries), config);
  } finally {
    for (const tensor of made) tensor.dispose();
  }
}

/**
 * Save adapters as PEFT does: `adapter_config.json` + `adapter_model.safetensors` (F32, metadata
 * `{"format": "pt"}`). `default` goes in `directory`, any other adapter in `directory/<name>`.
 * Both files are written atomically, so an interrupted save leaves the previous files intact.
 * Needs Node; in a browser use {@link serializeAdapterAsync} (or {@link serializeAdapter}).
 * @throws {NonFiniteTensorError} when a weight of any of the adapters holds NaN or ±Infinity; nothing is written then.
 * @throws {LoraError} when there is no adapter to save.
 */
export async function saveAdapter(
  adapterModel: AdapterModel,
  directory: string,
  options: { adapterNames?: readonly string[] } = {},
): Promise<void> {
  const host = fileHost();
  const names = options.adapterNames ?? adapterModel.adapterNames;
  // Nothing written is no save: after unload(), dispose() or deleting the last adapter, say so.
  if (names.length === 0) throw new LoraError(`[@lora/core] saveAdapter: the AdapterModel has no adapter to save (it was unloaded or disposed, or every adapter deleted); nothing was written to ${directory}.`);
  // Every adapter serialised (and checked finite) before the first file is written.
  const serialized: (readonly [string, Map<string, Uint8Array>])[] = [];
  for (const name of names) serialized.push([name, await serializeAdapterAsync(adapterModel, { adapterName: name })]);
  for (const [name, files] of serialized) {
    const target = name === 'default' ? directory : host.join(directory, name);
    // Weights first: a config never names weights that are not there yet.
    await writeFileAtomic(host.join(target, ADAPTER_WEIGHTS_NAME), files.get(ADAPTER_WEIGHTS_NAME)!);
    await writeFileAtomic(host.join(target, ADAPTER_CONFIG_NAME), files.get(ADAPTER_CONFIG_NAME)!);
  }
}

/**
 * Bytes from anywhere a browser or Node has them: a `Uint8Array` (or Node `Buffer`), an
 * `ArrayBuffer`, or anything with `arrayBuffer()` — a `File`, a `Blob`, a `fetch()` `Response`.
 */
export type BinarySource =
  | Uint8Array
  | ArrayBuffer
  | {
      /** Reads all of the source's bytes (`File`, `Blob` and `Response` have this method). */
      arrayBuffer(): Promise<ArrayBuffer>;
    };

/**
 * A saved adapter without a file system: its two PEFT files by file name, as
 * {@link serializeAdapter} gives them or from a file picker or `fetch()`.
 */
export interface AdapterFileSource {
  /** The files' bytes by file name: `adapter_config.json` and `adapter_model.safetensors` are read, other entries ignored. */
  readonly files: ReadonlyMap<string, BinarySource> | Readonly<Record<string, BinarySource>>;
  /** What to call the source in error messages (default `the adapter files`). */
  readonly name?: string;
}

/** The bytes of a {@link BinarySource}. A `Uint8Array` is returned as it is, not copied. */
export async function readBinarySource(source: BinarySource): Promise<Uint8Array> {
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  return new Uint8Array(await source.arrayBuffer());
}

/** Options for {@link loadAdapter}. */
export interface LoadAdapterOptions {
  /** Name to load the adapter under (default `default`). */
  readonly adapterName?: string;
  /** Load trainable (default false: frozen, `inference_mode`). */
  readonly isTrainable?: boolean;
  /** Make the loaded adapter the active one (default true). */
  readonly activate?: boolean;
  /** Load weights holding NaN or ±Infinity instead of throwing `NonFiniteTensorError` (default false). */
  readonly allowNonFinite?: boolean;
}

/** Read an adapter directory's config. @throws {LoraError} naming the file when missing or malformed. */
export async function readAdapterConfig(directory: string): Promise<PeftConfigJson> {
  const file = fileHost().join(directory, ADAPTER_CONFIG_NAME);
  return checkAdapterConfig(await readJsonFile(file), file);
}

function checkAdapterConfig(json: unknown, file: string): PeftConfigJson {
  if (json === null || typeof json !== 'object' || Array.isArray(json) || typeof (json as Record<string, unknown>)['peft_type'] !== 'string') {
    throw new ConfigError({ field: 'peft_type', received: json === null || typeof json !== 'object' ? json : (json as Record<string, unknown>)['peft_type'], expected: `a string in ${file}` });
  }
  return json as PeftConfigJson;
}

/** Read both files of a saved adapter from a directory (Node) or from bytes. */
async function readAdapterSource(source: string | AdapterFileSource): Promise<{ json: PeftConfigJson; weights: SafetensorsFile; weightsName: string }> {
  if (typeof source === 'string') {
    const weightsName = fileHost().join(source, ADAPTER_WEIGHTS_NAME);
    return { json: await readAdapterConfig(source), weights: await readSafetensorsFile(weightsName), weightsName };
  }
  const label = source.name ?? 'the adapter files';
  const files = source.files instanceof Map ? source.files : new Map(Object.entries(source.files));
  const take = async (fileName: string): Promise<Uint8Array> => {
    const file = files.get(fileName);
    if (file === undefined) {
      throw new ConfigError({ field: fileName, received: [...files.keys()], expected: `a file of ${label}`, hint: 'Pass both files serializeAdapter() returns.' });
    }
    return readBinarySource(file);
  };
  const configName = `${label}: ${ADAPTER_CONFIG_NAME}`;
  const json = checkAdapterConfig(parseJsonText(new TextDecoder().decode(await take(ADAPTER_CONFIG_NAME)), configName), configName);
  const weightsName = `${label}: ${ADAPTER_WEIGHTS_NAME}`;
  let weights: SafetensorsFile;
  try {
    weights = parseSafetensors(await take(ADAPTER_WEIGHTS_NAME));
  } catch (error) {
    throw error instanceof SafetensorsError && error.file === undefined ? error.withFile(weightsName) : error;
  }
  return { json, weights, weightsName };
}

/**
 * Load a PEFT-format adapter into `adapterModel` (PEFT's `load_adapter`), from a directory (Node)
 * or from its files' bytes (`{ files }`, anywhere, e.g. what {@link serializeAdapter} returned or
 * `File`s from a file picker). The saved config picks the plugin from the registry (naming the
 * package to install if it is missing); the adapter name is re-inserted into the saved keys.
 *
 * @throws {CheckpointError} listing missing, unexpected and mis-shaped tensors; nothing is changed then.
 */
export async function loadAdapter(adapterModel: AdapterModel, source: string | AdapterFileSource, options: LoadAdapterOptions = {}): Promise<void> {
  const name = options.adapterName ?? 'default';
  const { json, weights: file, weightsName } = await readAdapterSource(source);
  const plugin = adapterModel.registry.adapterForPeftConfig(json);
  const configName = typeof source === 'string' ? fileHost().join(source, ADAPTER_CONFIG_NAME) : ADAPTER_CONFIG_NAME;
  const config = inConfigFile(configName, () => plugin.fromPeftJson(json));
  checkLoadedTensors(file.tensors, { file: weightsName, floatOnly: true, allowNonFinite: options.allowNonFinite });
  inConfigFile(configName, () =>
    adapterModel.addAdapter(name, {
      plugin: plugin.name,
      config: { ...configToOptions(config), inferenceMode: !(options.isTrainable ?? false) },
    }),
  );
  try {
    assignAdapterTensors(adapterModel, name, file.tensors, weightsName);
  } catch (error) {
    adapterModel.deleteAdapter(name);
    throw error;
  }
  if (options.activate ?? true) adapterModel.setAdapter(name);
}

/**
 * Run `read` (parsing or applying a saved config) so that a `ConfigError` names the file and the
 * field as the file spells it (`lora_alpha`, not the option `loraAlpha`), without the options-style
 * example (`Pass e.g. { r: 8 }.`) that does not apply to a file.
 */
function inConfigFile<T>(file: string, read: () => T): T {
  try {
    return read();
  } catch (error) {
    // `adapterName` is the caller's argument, not a field of the file.
    if (!(error instanceof ConfigError) || error.field === 'adapterName') throw error;
    const field = camelToSnake(error.field);
    const hint = error.hint === undefined || /^Pass e\.g\. \{/u.test(error.hint) ? '' : error.hint;
    throw new ConfigError({ plugin: error.plugin, field, received: error.received, expected: error.expected, hint: `Fix it in ${file}.${hint ? ` ${hint}` : ''}`, cause: error });
  }
}

/**
 * Create an {@link AdapterModel} over `model` and load a saved adapter into it (PEFT's
 * `PeftModel.from_pretrained`).
 */
export async function loadAdapterModel<M extends Module>(
  model: M,
  source: string | AdapterFileSource,
  options: LoadAdapterOptions & { registry: LoraRegistry },
): Promise<AdapterModel<M>> {
  const restore = wrappingUndo(model);
  const adapterModel = new AdapterModel(model, { registry: options.registry });
  try {
    await loadAdapter(adapterModel, source, options);
  } catch (error) {
    // loadAdapter leaves no adapter behind on failure; the model gets its trainable flags back too.
    restore();
    throw error;
  }
  return adapterModel;
}

function configToOptions(config: object): Record<string, unknown> {
  return { ...(config as Record<string, unknown>) };
}

function assignAdapterTensors(adapterModel: AdapterModel, name: string, saved: ReadonlyMap<string, SafetensorsEntry>, source: string): void {
  // What the adapter expects, by file key (null: any shape, for instances and states that resize on load).
  const expected = new Map<string, readonly number[] | null>();
  const plans: (() => void)[] = [];
  /** Load one group of tensors (an instance or the adapter-level state) through its own loader or by assignment. */
  const plan = (keys: readonly [string, string, tf.Variable][], load: ((tensors: ReadonlyMap<string, tf.Tensor>) => void) | undefined): void => {
    for (const [fileKey, , variable] of keys) expected.set(fileKey, load ? null : variable.shape);
    plans.push(() => {
      const tensors = new Map<string, tf.Tensor>();
      try {
        for (const [fileKey, key] of keys) tensors.set(key, entryToTensor(saved.get(fileKey)!, fileKey));
        if (load) load(tensors);
        else for (const [, key, variable] of keys) variable.assign(tensors.get(key)!);
      } finally {
        for (const tensor of tensors.values()) tensor.dispose();
      }
    });
  };
  const adapterState = adapterModel.adapterState(name);
  plan(
    (adapterState?.namedTensors?.() ?? []).map(([key, variable]) => [key, key, variable]),
    adapterState?.loadTensors?.bind(adapterState),
  );
  for (const [modulePath, instance] of adapterModel.adapterInstances(name)) {
    plan(
      instance.namedTensors().map(([key, variable]) => [`${PREFIX}${modulePath}.${key}`, key, variable]),
      instance.loadTensors?.bind(instance),
    );
  }
  // The rest of the state dict: modules_to_save copies and trained biases.
  const rest = [...adapterStateDict(adapterModel, name)].filter(([fileKey]) => !expected.has(fileKey));
  plan(rest.map(([fileKey, variable]) => [fileKey, fileKey, variable]), undefined);
  assertTensorsFit(compareTensorShapes(expected, saved), {
    plugin: '@lora/core',
    source: source,
    target: `adapter "${name}" on this model`,
    hint: 'Check that the adapter was saved for this base model and these target modules.',
  });
  for (const apply of plans) apply();
}

/** Whether a directory holds a PEFT adapter. */
export function isAdapterDirectory(directory: string): Promise<boolean> {
  return pathExists(fileHost().join(directory, ADAPTER_CONFIG_NAME));
}


