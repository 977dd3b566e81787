import type * as tf from '@tensorflow/tfjs-core';
import path from 'node:path';
import { promises as fs } from 'node:fs';
import { AdapterLayer } from './adapter-layer.js';
import { AdapterModel } from './adapter-model.js';
import { ConfigError } from './errors.js';
import { checkLoadedTensors } from './finite.js';
import { readJsonFile, readSafetensorsFile, writeJsonAtomic, writeSafetensorsFile } from './files.js';
import type { Module } from './module.js';
import type { PeftConfigJson } from './plugin.js';
import type { LoraRegistry } from './registry.js';
import { entryToTensor, tensorToEntry, type SafetensorsEntry } from './safetensors.js';
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
 * Save adapters as PEFT does: `adapter_config.json` + `adapter_model.safetensors` (F32, metadata
 * `{"format": "pt"}`). `default` goes in `directory`, any other adapter in `directory/<name>`.
 * Both files are written atomically, so an interrupted save leaves the previous files intact.
 */
export async function saveAdapter(
  adapterModel: AdapterModel,
  directory: string,
  options: { adapterNames?: readonly string[] } = {},
): Promise<void> {
  const names = options.adapterNames ?? adapterModel.adapterNames;
  for (const name of names) {
    const target = name === 'default' ? directory : path.join(directory, name);
    const entries = new Map<string, SafetensorsEntry>();
    for (const [key, variable] of adapterStateDict(adapterModel, name)) entries.set(key, tensorToEntry(variable));
    // Plugins that save a different form (AdaLoRA's pruned triplets) replace their entries.
    const stateReplacements = adapterModel.adapterState(name)?.tensorsForSave?.() ?? [];
    try {
      for (const [key, tensor] of stateReplacements) entries.set(key, tensorToEntry(tensor));
    } finally {
      for (const [, tensor] of stateReplacements) tensor.dispose();
    }
    for (const [modulePath, instance] of adapterModel.adapterInstances(name)) {
      const replacements = instance.tensorsForSave?.() ?? [];
      try {
        for (const [key, tensor] of replacements) entries.set(`${PREFIX}${modulePath}.${key}`, tensorToEntry(tensor));
      } finally {
        for (const [, tensor] of replacements) tensor.dispose();
      }
    }
    await writeSafetensorsFile(path.join(target, ADAPTER_WEIGHTS_NAME), entries, { format: 'pt' });
    await writeJsonAtomic(path.join(target, ADAPTER_CONFIG_NAME), adapterPeftConfig(adapterModel, name));
  }
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
  const file = path.join(directory, ADAPTER_CONFIG_NAME);
  const json = await readJsonFile(file);
  if (json === null || typeof json !== 'object' || Array.isArray(json) || typeof (json as Record<string, unknown>)['peft_type'] !== 'string') {
    throw new ConfigError({ field: 'peft_type', received: json === null || typeof json !== 'object' ? json : (json as Record<string, unknown>)['peft_type'], expected: `a string in ${file}` });
  }
  return json as PeftConfigJson;
}

/**
 * Load a PEFT-format adapter directory into `adapterModel` (PEFT's `load_adapter`). The saved
 * config picks the plugin from the registry (naming the package to install if it is missing); the
 * adapter name is re-inserted into the saved keys.
 *
 * @throws {CheckpointError} listing missing, unexpected and mis-shaped tensors; nothing is changed then.
 */
export async function loadAdapter(adapterModel: AdapterModel, directory: string, options: LoadAdapterOptions = {}): Promise<void> {
  const name = options.adapterName ?? 'default';
  const json = await readAdapterConfig(directory);
  const plugin = adapterModel.registry.adapterForPeftConfig(json);
  const config = plugin.fromPeftJson(json);
  const file = await readSafetensorsFile(path.join(directory, ADAPTER_WEIGHTS_NAME));
  checkLoadedTensors(file.tensors, { file: path.join(directory, ADAPTER_WEIGHTS_NAME), floatOnly: true, allowNonFinite: options.allowNonFinite });
  adapterModel.addAdapter(name, {
    plugin: plugin.name,
    config: { ...configToOptions(config), inferenceMode: !(options.isTrainable ?? false) },
  });
  try {
    assignAdapterTensors(adapterModel, name, file.tensors, path.join(directory, ADAPTER_WEIGHTS_NAME));
  } catch (error) {
    adapterModel.deleteAdapter(name);
    throw error;
  }
  if (options.activate ?? true) adapterModel.setAdapter(name);
}

/**
 * Create an {@link AdapterModel} over `model` and load a saved adapter into it (PEFT's
 * `PeftModel.from_pretrained`).
 */
export async function loadAdapterModel<M extends Module>(
  model: M,
  directory: string,
  options: LoadAdapterOptions & { registry: LoraRegistry },
): Promise<AdapterModel<M>> {
  const adapterModel = new AdapterModel(model, { registry: options.registry });
  await loadAdapter(adapterModel, directory, options);
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
export async function isAdapterDirectory(directory: string): Promise<boolean> {
  try {
    await fs.access(path.join(directory, ADAPTER_CONFIG_NAME));
    return true;
  } catch {
    return false;
  }
}


