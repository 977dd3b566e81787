import { faultPoint, fileHost, pathExists } from '@lora/core/internal';
import { CheckpointError, checkTensorsToSave, ConfigError, holdsNonFloatWeight, LoraError, readJsonFile, readSafetensorsFile, writeFileAtomic, writeJsonAtomic, writeSafetensorsFile, type SafetensorsEntry } from '@lora/core';
import { BertForSequenceClassification, BertModel } from './bert-model.js';
import { parseBertConfig } from './bert-config.js';
import { PACKAGE, type ConfigJson } from './config-fields.js';
import { Gpt2LMHeadModel, Gpt2Model } from './gpt2-model.js';
import { parseGpt2Config } from './gpt2-config.js';
import { LlamaForCausalLM, LlamaModel } from './llama-model.js';
import { parseLlamaConfig } from './llama-config.js';
import { CausalLanguageModel, type ArchitectureName, type PretrainedModel } from './pretrained-model.js';
import { loadStateDict, stateDict, type LoadReport } from './state-dict.js';
import { checkConfigAgainstCheckpoint } from './checkpoint-shapes.js';

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
  if (modelType !== undefined && modelType !== null) {
    throw new ConfigError({
      plugin: PACKAGE,
      field: 'model_type',
      received: modelType,
      expected: `gpt2, llama or bert (in ${source}, which has no architectures list)`,
      hint: 'Only GPT-2, Llama and BERT are implemented; a checkpoint of another model type cannot be loaded.',
    });
  }
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
  checkArchitectureOption(options.architecture);
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
    default:
      // Unreachable for typed callers; JavaScript callers reach it with any string.
      checkArchitectureOption(architecture as unknown);
      throw new ConfigError({ plugin: PACKAGE, field: 'architecture', received: architecture, expected: `one of ${ARCHITECTURES.join(', ')}` });
  }
}

function checkArchitectureOption(architecture: unknown): void {
  if (architecture !== undefined && !isArchitecture(architecture)) {
    throw new ConfigError({ plugin: PACKAGE, field: 'architecture', received: architecture, expected: `one of ${ARCHITECTURES.join(', ')} (option)`, hint: 'Leave it out to use config.architectures.' });
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
    const shardFile = fileHost().join(directory, file);
    if (!(await pathExists(shardFile))) {
      throw new CheckpointError(`[${PACKAGE}] ${index} lists the shard ${file} (for ${names.length} tensor${names.length === 1 ? '' : 's'}, e.g. ${names[0]}), but ${shardFile} does not exist. Restore the shard, or save the model again.`, {
        plugin: PACKAGE,
        missing: names,
      });
    }
    const shard = await readSafetensorsFile(shardFile);
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

const EXPECTED_DIRECTORY = `a model directory holding ${CONFIG_NAME} and ${WEIGHTS_NAME} (or ${WEIGHTS_INDEX_NAME} and its shards)`;

/** Refuse a path that does not exist, is a file, or lacks config.json, saying what is expected. */
async function checkModelDirectory(directory: string): Promise<void> {
  const host = fileHost();
  if (!(await pathExists(directory))) {
    throw new CheckpointError(`[${PACKAGE}] ${directory} does not exist; expected ${EXPECTED_DIRECTORY}. Check the path.`, { plugin: PACKAGE });
  }
  if (await isFile(directory)) {
    const parent = host.dirname(directory);
    throw new CheckpointError(`[${PACKAGE}] ${directory} is a file; expected ${EXPECTED_DIRECTORY}. Pass the directory that holds it (e.g. ${parent}).`, { plugin: PACKAGE });
  }
  if (!(await pathExists(host.join(directory, CONFIG_NAME)))) {
    throw new CheckpointError(
      `[${PACKAGE}] ${directory} has no ${CONFIG_NAME}; expected ${EXPECTED_DIRECTORY}. Save the model with save_pretrained (Python) or savePretrained, which write both, or copy the config.json that belongs to these weights.`,
      { plugin: PACKAGE, missing: [CONFIG_NAME] },
    );
  }
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
  checkArchitectureOption(options.architecture);
  const configFile = fileHost().join(directory, CONFIG_NAME);
  await checkModelDirectory(directory);
  const json = await readJsonFile(configFile);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new ConfigError({ plugin: PACKAGE, field: CONFIG_NAME, received: json, expected: `a JSON object (in ${configFile})` });
  }
  const architecture = options.architecture ?? architectureOf(json as ConfigJson, configFile);
  // The weights first, and the shapes the config implies checked against them, so a config that does
  // not belong to them fails before a (possibly huge) model is allocated.
  const tensors = await readCheckpointTensors(directory);
  checkConfigAgainstCheckpoint(architecture, json as ConfigJson, tensors, { configFile, checkpoint: directory });
  const model = createModel(json as ConfigJson, { architecture, source: configFile });
  try {
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
  /** Split the weights into shards of at most this many bytes (a positive integer) with an index file (default 5 GB, as transformers). */
  readonly maxShardBytes?: number;
  /** Extra `__metadata__` entries, strings only (`format: pt` is always written). */
  readonly metadata?: Readonly<Record<string, string>>;
  /**
   * Replace a checkpoint of the other layout already in the directory (default false: refuse): a
   * single-file save over a sharded one removes the old index and the shards it lists, a sharded save
   * over a single file removes that `model.safetensors`. No other file is touched.
   */
  readonly overwrite?: boolean;
}

const SHARD_NAME = /^model-\d{5}-of-\d{5}\.safetensors$/u;

function checkSaveOptions(options: SavePretrainedOptions): void {
  const maxShardBytes = options.maxShardBytes;
  if (maxShardBytes !== undefined && !(typeof maxShardBytes === 'number' && Number.isInteger(maxShardBytes) && maxShardBytes > 0)) {
    throw new ConfigError({ plugin: PACKAGE, field: 'maxShardBytes', received: maxShardBytes, expected: 'a positive integer number of bytes', hint: 'Pass e.g. { maxShardBytes: 2_000_000_000 }, or leave it out for 5 GB shards.' });
  }
  if (options.metadata !== undefined) {
    if (options.metadata === null || typeof options.metadata !== 'object' || Array.isArray(options.metadata)) {
      throw new ConfigError({ plugin: PACKAGE, field: 'metadata', received: options.metadata, expected: 'an object of string values' });
    }
    for (const [key, value] of Object.entries(options.metadata)) {
      if (typeof value !== 'string') {
        throw new ConfigError({
          plugin: PACKAGE,
          field: `metadata.${key}`,
          received: value,
          expected: 'a string (safetensors metadata holds strings only)',
          hint: `Pass e.g. { metadata: { ${key}: ${JSON.stringify(String(value))} } }; nothing was written.`,
        });
      }
    }
  }
  if (options.overwrite !== undefined && typeof options.overwrite !== 'boolean') {
    throw new ConfigError({ plugin: PACKAGE, field: 'overwrite', received: options.overwrite, expected: 'true or false' });
  }
}

/** Whether `path` exists and is a file rather than a directory (a directory lists `path/.`). */
async function isFile(path: string): Promise<boolean> {
  return (await pathExists(path)) && !(await pathExists(`${path}/.`));
}

/** The shard files an existing index lists (plain names in the directory), or [] when it cannot be read. */
async function indexedShards(index: string): Promise<string[]> {
  try {
    const json = (await readJsonFile(index)) as { weight_map?: unknown } | null;
    const map = json?.weight_map;
    if (map === null || typeof map !== 'object') return [];
    return [...new Set(Object.values(map as Record<string, unknown>))].filter((file): file is string => typeof file === 'string' && !/[\\/]/u.test(file) && file.endsWith('.safetensors'));
  } catch {
    return [];
  }
}

async function removeFile(file: string): Promise<void> {
  faultPoint('remove', file);
  await fileHost().remove(file);
}

/**
 * Save a model in Hugging Face's layout: `config.json` and `model.safetensors` (or shards plus
 * `model.safetensors.index.json` when larger than `maxShardBytes`), keys as transformers names them and
 * tied copies left out. Every file is written atomically, weights before `config.json`, and an
 * outdated `config.json` is removed before the weights change, so a save killed at any point leaves
 * the old model, the new one, or a directory that fails to load with a clear error — never new
 * weights beside an old config. A save that fails before its weights are in place restores the old
 * `config.json` and removes the shards it created (a sharded save over one of the same shard count,
 * whose names it reuses, then leaves a directory that fails to load with a clear error).
 *
 * Into a directory that already holds a checkpoint of the other layout (a sharded one for a
 * single-file save, or the reverse) it refuses unless `overwrite: true`; then it removes only the
 * files of that checkpoint (the index and the shards it lists, or `model.safetensors`). Shards of an
 * earlier sharded save that the new index no longer lists are removed after the new index is written.
 *
 * @throws {LoraError} when the model still holds adapter layers (merge or unload them first), or a
 * layer whose weight is not a float parameter (a 4-bit one: save it with `@lora/quant`), which it would leave out.
 * @throws {NonFiniteTensorError} when a weight holds NaN or ±Infinity; nothing is written then.
 * @throws {ConfigError} for an invalid option (`maxShardBytes`, `metadata` values that are not strings); nothing is written then.
 * @throws {CheckpointError} when `directory` is a file, or holds a checkpoint of the other layout without `overwrite`.
 */
export async function savePretrained(model: PretrainedModel, directory: string, options: SavePretrainedOptions = {}): Promise<void> {
  checkSaveOptions(options);
  // A layer keeping its weight outside the parameters this writes (a 4-bit QuantLinear's codes):
  // saved, the checkpoint would lack that weight and fail to load later.
  const foreign = model.namedModules().find(([path, module]) => path !== '' && holdsNonFloatWeight(module));
  if (foreign) {
    throw new LoraError(
      `[${PACKAGE}] savePretrained: ${foreign[0]} is a ${foreign[1].constructor.name.replace(/^_+/u, '')}, whose weight is not a float parameter and would not be written; nothing was written to ${directory}. Save a 4-bit model with saveQuantizedModel (the quant plugin's package), or turn it into a float one first (its dequantizeModel, or mergeAndUnload({ dequantize: true })).`,
      { plugin: PACKAGE },
    );
  }
  const entries = stateDict(model);
  const wrapped = [...entries.keys()].find((key) => /(^|\.)(base_layer|lora_[A-Za-z]+|modules_to_save|original_module)\./u.test(key));
  if (wrapped) {
    throw new LoraError(`[${PACKAGE}] savePretrained: the model holds adapter tensors (e.g. ${wrapped}). Call adapterModel.mergeAndUnload() first, or save the adapter with saveAdapter().`, {
      plugin: PACKAGE,
    });
  }
  const host = fileHost();
  const single = host.join(directory, WEIGHTS_NAME);
  const index = host.join(directory, WEIGHTS_INDEX_NAME);
  const configFile = host.join(directory, CONFIG_NAME);
  // Finite or nothing: checked before the first file is written.
  checkTensorsToSave(entries, { file: single, plugin: PACKAGE });
  const metadata = { ...options.metadata, format: 'pt' };
  const maxShardBytes = options.maxShardBytes ?? 5_000_000_000;
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
  const sharded = shards.length > 1;

  if (await isFile(directory)) {
    throw new CheckpointError(`[${PACKAGE}] savePretrained: ${directory} is a file, not a directory. Pass the path of a directory (it is created if missing); nothing was written.`, { plugin: PACKAGE });
  }
  const hadSingle = await pathExists(single);
  const hadIndex = await pathExists(index);
  const otherLayout = sharded ? (hadSingle ? WEIGHTS_NAME : null) : hadIndex ? WEIGHTS_INDEX_NAME : null;
  if (otherLayout !== null && options.overwrite !== true) {
    throw new CheckpointError(
      `[${PACKAGE}] savePretrained: ${directory} already holds a ${sharded ? 'single-file' : 'sharded'} checkpoint (${otherLayout}); this save would be ${sharded ? `sharded (${shards.length} shards)` : 'a single file'}. ` +
        'Pass { overwrite: true } to replace it (only that checkpoint\'s files are removed), or save into another directory; nothing was written.',
      { plugin: PACKAGE },
    );
  }
  try {
    await host.mkdir(directory);
  } catch (error) {
    throw new CheckpointError(`[${PACKAGE}] savePretrained: cannot create the directory ${directory} (${(error as { code?: string }).code ?? String(error)}): a part of the path is a file or not writable. Pass another directory; nothing was written.`, {
      plugin: PACKAGE,
      cause: error,
    });
  }
  // What this writes is a float32 checkpoint: a quantization_config kept from a 4-bit source
  // (its model dequantized since) would send loaders to a 4-bit reader that finds no 4-bit weights.
  const { quantization_config: _quantization, ...floatConfig } = model.configJson() as Record<string, unknown>;
  const configText = `${JSON.stringify({ ...floatConfig, torch_dtype: 'float32' }, null, 2)}\n`;
  const oldShards = hadIndex ? await indexedShards(index) : [];
  const count = String(shards.length).padStart(5, '0');
  const shardNames = shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${count}.safetensors`);
  // An old config.json that differs from the new one goes first: a kill while the weights change
  // then leaves a directory without config.json (a clear error), never new weights read with an old config.
  const oldConfig = (await pathExists(configFile)) ? await host.readText(configFile).catch(() => null) : null;
  const created: string[] = [];
  let committed = false; // true once the new weights are what a load reads
  try {
    if (oldConfig !== null && oldConfig !== configText) await removeFile(configFile);
    if (!sharded) {
      // model.safetensors is read before any index, so once it is written the new weights are what loads.
      await writeSafetensorsFile(single, shards[0]!, metadata);
      committed = true;
      if (hadIndex) {
        await removeFile(index);
        for (const file of oldShards) if (SHARD_NAME.test(file)) await removeFile(host.join(directory, file));
      }
    } else {
      // Shards of the same count have the same names: the old index goes before any of them is
      // replaced, so it never lists a mix of old and new shards. Other names leave the old
      // checkpoint whole until the new index replaces the old one.
      const collide = shardNames.some((file) => oldShards.includes(file));
      if (hadIndex && collide) await removeFile(index);
      const weightMap: Record<string, string> = {};
      for (const [i, shard] of shards.entries()) {
        const file = shardNames[i]!;
        if (!oldShards.includes(file)) created.push(file);
        await writeSafetensorsFile(host.join(directory, file), shard, metadata);
        for (const name of shard.keys()) weightMap[name] = file;
      }
      const sorted = Object.fromEntries(Object.entries(weightMap).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
      await writeJsonAtomic(index, { metadata: { total_size: totalBytes }, weight_map: sorted });
      // An old model.safetensors is read before the index (here and by transformers), so until it is
      // removed the directory still loads as the old model.
      if (hadSingle) await removeFile(single);
      committed = true;
      for (const file of oldShards) if (SHARD_NAME.test(file) && !shardNames.includes(file)) await removeFile(host.join(directory, file));
    }
    await writeFileAtomic(configFile, configText);
  } catch (error) {
    if (!committed) {
      // A failed save leaves the old checkpoint as it was where it can: its config back, the shards this call created gone.
      await Promise.resolve()
        .then(async () => {
          for (const file of created) await removeFile(host.join(directory, file));
          if (oldConfig !== null && oldConfig !== configText) await writeFileAtomic(configFile, oldConfig);
        })
        .catch(() => undefined);
    }
    throw error;
  }
}
