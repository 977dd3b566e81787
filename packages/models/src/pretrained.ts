import { fileHost, pathExists } from '@lora/core/internal';
import { CheckpointError, checkTensorsToSave, ConfigError, LoraError, readJsonFile, readSafetensorsFile, writeJsonAtomic, writeSafetensorsFile, type SafetensorsEntry } from '@lora/core';
import { BertForSequenceClassification, BertModel } from './bert-model.js';
import { parseBertConfig } from './bert-config.js';
import { PACKAGE, type ConfigJson } from './config-fields.js';
import { Gpt2LMHeadModel, Gpt2Model } from './gpt2-model.js';
import { parseGpt2Config } from './gpt2-config.js';
import { LlamaForCausalLM, LlamaModel } from './llama-model.js';
import { parseLlamaConfig } from './llama-config.js';
import { CausalLanguageModel, type ArchitectureName, type PretrainedModel } from './pretrained-model.js';
import { loadStateDict, stateDict, type LoadReport } from './state-dict.js';

/** The model configuration file of Hugging Face's layout. */
export const CONFIG_NAME = 'config.json';
/** The single-file weights of Hugging Face's layout. */
export const WEIGHTS_NAME = 'model.safetensors';
/** The index of sharded weights (tensor name → shard file) of Hugging Face's layout. */
export const WEIGHTS_INDEX_NAME = 'model.safetensors.index.json';

/** Every architecture this package builds, by `config.architectures[0]`. */
export const ARCHITECTURES: readonly ArchitectureName[] = [
  'GPT2LMHeadModel',
  'GPT2Model',
  'LlamaForCausalLM',
  'LlamaModel',
  'BertModel',
  'BertForSequenceClassification',
];

/** The model class built for each architecture name. */
export interface ArchitectureModels {
  /** GPT-2 with its language-model head; what a `gpt2` config without `architectures` builds. */
  GPT2LMHeadModel: Gpt2LMHeadModel;
  /** The GPT-2 trunk alone: returns hidden states, no logits. */
  GPT2Model: Gpt2Model;
  /** Llama with its language-model head; what a `llama` config without `architectures` builds. */
  LlamaForCausalLM: LlamaForCausalLM;
  /** The Llama trunk alone: returns hidden states, no logits. */
  LlamaModel: LlamaModel;
  /** The BERT encoder with its pooler; what a `bert` config without `architectures` builds. */
  BertModel: BertModel;
  /** BERT with a `numLabels`-way classification head. */
  BertForSequenceClassification: BertForSequenceClassification;
}

/** Any model {@link loadPretrained} can return. */
export type AnyPretrainedModel = ArchitectureModels[ArchitectureName];

function isArchitecture(name: unknown): name is ArchitectureName {
  return typeof name === 'string' && (ARCHITECTURES as readonly string[]).includes(name);
}

/**
 * The architecture named by a `config.json` object: `architectures[0]`, or for a config without
 * `architectures` the task model of its `model_type`.
 * @throws {ConfigError} naming `architectures` (or `model_type`) when it is absent or not built here.
 */
export function architectureOf(json: ConfigJson, source = CONFIG_NAME): ArchitectureName {
  const list = json['architectures'];
  if (Array.isArray(list) && list.length > 0) {
    const name = list[0];
    if (isArchitecture(name)) return name;
    throw new ConfigError({
      plugin: PACKAGE,
      field: 'architectures',
      received: list,
      expected: `one of ${ARCHITECTURES.join(', ')} (in ${source})`,
      hint: 'Only GPT-2, Llama and BERT are implemented.',
    });
  }
  const byType: Record<string, ArchitectureName> = { gpt2: 'GPT2LMHeadModel', llama: 'LlamaForCausalLM', bert: 'BertModel' };
  const modelType = json['model_type'];
  if (typeof modelType === 'string' && byType[modelType]) return byType[modelType];
  throw new ConfigError({
    plugin: PACKAGE,
    field: 'architectures',
    received: list ?? null,
    expected: `a list naming one of ${ARCHITECTURES.join(', ')}, or model_type gpt2, llama or bert (in ${source})`,
  });
}

/** Options for {@link createModel}. */
export interface CreateModelOptions {
  /** Build this architecture instead of the one the config names. */
  readonly architecture?: ArchitectureName;
  /** Seed of the random initialisation (default 0). */
  readonly seed?: number;
  /** Where the config came from, for error messages (default `config.json`). */
  readonly source?: string;
}

/**
 * Build a randomly initialised model from a Hugging Face `config.json` object.
 * @throws {ConfigError} naming the field that is missing or invalid.
 * @example
 * const model = createModel({ architectures: ['GPT2LMHeadModel'], vocab_size: 257, n_embd: 64, n_layer: 2, n_head: 4 });
 */
export function createModel(json: ConfigJson, options: CreateModelOptions = {}): AnyPretrainedModel {
  const source = options.source ?? CONFIG_NAME;
  const architecture = options.architecture ?? architectureOf(json, source);
  const seed = { seed: options.seed ?? 0 };
  switch (architecture) {
    case 'GPT2LMHeadModel':
      return new Gpt2LMHeadModel(parseGpt2Config(json, source), seed);
    case 'GPT2Model':
      return new Gpt2Model(parseGpt2Config(json, source), seed);
    case 'LlamaForCausalLM':
      return new LlamaForCausalLM(parseLlamaConfig(json, source), seed);
    case 'LlamaModel':
      return new LlamaModel(parseLlamaConfig(json, source), seed);
    case 'BertModel':
      return new BertModel(parseBertConfig(json, source), seed);
    case 'BertForSequenceClassification':
      return new BertForSequenceClassification(parseBertConfig(json, source), seed);
  }
}

/**
 * Read the weights of a Hugging Face model directory: `model.safetensors`, or every shard listed in
 * `model.safetensors.index.json`.
 * @throws {CheckpointError} when the directory has neither, or the index names a tensor its shard lacks.
 */
export async function readCheckpointTensors(directory: string): Promise<Map<string, SafetensorsEntry>> {
  const single = fileHost().join(directory, WEIGHTS_NAME);
  const index = fileHost().join(directory, WEIGHTS_INDEX_NAME);
  if (await pathExists(single)) return new Map((await readSafetensorsFile(single)).tensors);
  if (!(await pathExists(index))) {
    const hint = (await pathExists(fileHost().join(directory, 'pytorch_model.bin')))
      ? ' It has pytorch_model.bin: convert it with `model.save_pretrained(dir, safe_serialization=True)` in Python.'
      : '';
    throw new CheckpointError(`[${PACKAGE}] ${directory} has no ${WEIGHTS_NAME} and no ${WEIGHTS_INDEX_NAME}.${hint}`, { plugin: PACKAGE });
  }
  const json = await readJsonFile(index);
  const weightMap = json !== null && typeof json === 'object' ? (json as Record<string, unknown>)['weight_map'] : undefined;
  if (weightMap === null || typeof weightMap !== 'object' || Array.isArray(weightMap)) {
    throw new ConfigError({ plugin: PACKAGE, field: 'weight_map', received: weightMap, expected: `an object of tensor name → shard file (in ${index})` });
  }
  const byFile = new Map<string, string[]>();
  for (const [name, file] of Object.entries(weightMap as Record<string, unknown>)) {
    if (typeof file !== 'string' || file.includes('/') || file.includes('\\')) {
      throw new ConfigError({ plugin: PACKAGE, field: `weight_map.${name}`, received: file, expected: `a shard file name in ${directory}` });
    }
    byFile.set(file, [...(byFile.get(file) ?? []), name]);
  }
  const tensors = new Map<string, SafetensorsEntry>();
  const missing: string[] = [];
  for (const [file, names] of byFile) {
    const shard = await readSafetensorsFile(fileHost().join(directory, file));
    for (const name of names) {
      const entry = shard.tensors.get(name);
      if (entry) tensors.set(name, entry);
      else missing.push(`${name} (in ${file})`);
    }
  }
  if (missing.length > 0) {
    throw new CheckpointError(`[${PACKAGE}] ${WEIGHTS_INDEX_NAME} lists tensors its shards do not hold: ${missing.join(', ')}.`, {
      plugin: PACKAGE,
      missing,
    });
  }
  return tensors;
}

/** Options for {@link loadPretrained}. */
export interface LoadPretrainedOptions {
  /** Build this architecture instead of `config.architectures[0]` (e.g. `GPT2Model` from a `GPT2LMHeadModel` checkpoint). */
  readonly architecture?: ArchitectureName;
  /** Throw on missing or unexpected tensors (default true); mis-shaped tensors always throw. */
  readonly strict?: boolean;
  /** Receives what was matched, skipped and upcast. */
  readonly onReport?: (report: LoadReport) => void;
  /** Load weights holding NaN or ±Infinity instead of throwing `NonFiniteTensorError` (default false). */
  readonly allowNonFinite?: boolean;
}

/**
 * Load a model saved in Hugging Face's layout (`config.json` + `model.safetensors`, or a sharded
 * `model.safetensors.index.json`): the architecture comes from `config.architectures`, tensors are
 * matched by name, F16/BF16 weights are upcast to float32. The model is returned in eval mode (no
 * dropout); call `.train()` to fine-tune. The caller disposes it.
 *
 * @throws {ConfigError} naming the config field that is missing, invalid or an unknown architecture.
 * @throws {CheckpointError} naming missing, unexpected and mis-shaped tensors.
 * @example
 * const model = await loadPretrained('fixtures/reference/models/gpt2');
 * const logits = tf.tidy(() => (model as Gpt2LMHeadModel).forward(ids));
 */
export async function loadPretrained<A extends ArchitectureName = ArchitectureName>(
  directory: string,
  options: LoadPretrainedOptions & { readonly architecture?: A } = {},
): Promise<ArchitectureModels[A]> {
  const configFile = fileHost().join(directory, CONFIG_NAME);
  const json = await readJsonFile(configFile);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new ConfigError({ plugin: PACKAGE, field: CONFIG_NAME, received: json, expected: `a JSON object (in ${configFile})` });
  }
  const model = createModel(json as ConfigJson, { architecture: options.architecture, source: configFile });
  try {
    const tensors = await readCheckpointTensors(directory);
    const report = loadStateDict(model, tensors, { strict: options.strict, allowNonFinite: options.allowNonFinite, source: directory });
    options.onReport?.(report);
  } catch (error) {
    model.dispose();
    throw error;
  }
  model.eval();
  return model as ArchitectureModels[A];
}

/**
 * Load a decoder-only language model (GPT-2 or Llama with its LM head) for generation or causal-LM fine-tuning.
 * @throws {ConfigError} naming `architectures` when the checkpoint is not a causal LM; otherwise as {@link loadPretrained}.
 * @example
 * const model = await loadCausalLanguageModel('path/to/model');
 * const [tokens] = generate(model, [prompt], { maxNewTokens: 20 });
 */
export async function loadCausalLanguageModel(directory: string, options: Omit<LoadPretrainedOptions, 'architecture'> = {}): Promise<CausalLanguageModel> {
  const model = await loadPretrained(directory, options);
  if (!(model instanceof CausalLanguageModel)) {
    model.dispose();
    throw new ConfigError({
      plugin: PACKAGE,
      field: 'architectures',
      received: model.architecture,
      expected: `a causal language model (GPT2LMHeadModel or LlamaForCausalLM) in ${fileHost().join(directory, CONFIG_NAME)}`,
    });
  }
  return model;
}

/** Options for {@link savePretrained}. */
export interface SavePretrainedOptions {
  /** Split the weights into shards of at most this many bytes with an index file (default 5 GB, as transformers). */
  readonly maxShardBytes?: number;
  /** Extra `__metadata__` entries (`format: pt` is always written). */
  readonly metadata?: Readonly<Record<string, string>>;
}

/**
 * Save a model in Hugging Face's layout: `config.json` and `model.safetensors` (or shards plus
 * `model.safetensors.index.json` when larger than `maxShardBytes`), keys as transformers names them and
 * tied copies left out. Every file is written atomically.
 * @throws {LoraError} when the model still holds adapter layers (merge or unload them first).
 * @throws {NonFiniteTensorError} when a weight holds NaN or ±Infinity; nothing is written then.
 */
export async function savePretrained(model: PretrainedModel, directory: string, options: SavePretrainedOptions = {}): Promise<void> {
  const entries = stateDict(model);
  const wrapped = [...entries.keys()].find((key) => /(^|\.)(base_layer|lora_[A-Za-z]+|modules_to_save|original_module)\./u.test(key));
  if (wrapped) {
    throw new LoraError(`[${PACKAGE}] savePretrained: the model holds adapter tensors (e.g. ${wrapped}). Call adapterModel.mergeAndUnload() first, or save the adapter with saveAdapter().`, {
      plugin: PACKAGE,
    });
  }
  // Finite or nothing: checked before the first file is written.
  checkTensorsToSave(entries, { file: fileHost().join(directory, WEIGHTS_NAME), plugin: PACKAGE });
  const metadata = { ...options.metadata, format: 'pt' };
  const maxShardBytes = options.maxShardBytes ?? 5_000_000_000;
  await fileHost().mkdir(directory);
  await writeJsonAtomic(fileHost().join(directory, CONFIG_NAME), { ...model.configJson(), torch_dtype: 'float32' });
  const shards: Map<string, SafetensorsEntry>[] = [new Map()];
  let shardBytes = 0;
  let totalBytes = 0;
  for (const [name, entry] of entries) {
    const size = entry.data.byteLength;
    if (shardBytes > 0 && shardBytes + size > maxShardBytes) {
      shards.push(new Map());
      shardBytes = 0;
    }
    shards[shards.length - 1]!.set(name, entry);
    shardBytes += size;
    totalBytes += size;
  }
  if (shards.length === 1) {
    await writeSafetensorsFile(fileHost().join(directory, WEIGHTS_NAME), shards[0]!, metadata);
    await fileHost().remove(fileHost().join(directory, WEIGHTS_INDEX_NAME));
    return;
  }
  const count = String(shards.length).padStart(5, '0');
  const weightMap: Record<string, string> = {};
  for (const [i, shard] of shards.entries()) {
    const file = `model-${String(i + 1).padStart(5, '0')}-of-${count}.safetensors`;
    await writeSafetensorsFile(fileHost().join(directory, file), shard, metadata);
    for (const name of shard.keys()) weightMap[name] = file;
  }
  const sorted = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  await writeJsonAtomic(fileHost().join(directory, WEIGHTS_INDEX_NAME), { metadata: { total_size: totalBytes }, weight_map: sorted });
  await fileHost().remove(fileHost().join(directory, WEIGHTS_NAME));
}
