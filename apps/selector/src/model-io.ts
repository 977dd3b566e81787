import * as tf from '@tensorflow/tfjs-core';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import {
  ADAPTER_CONFIG_NAME,
  AdapterModel,
  CheckpointError,
  ConfigError,
  createDescribedPlugin,
  createLoraRegistry,
  LoraError,
  loadAdapter,
  lora,
  readAdapterConfig,
  readJsonFile,
  writeFileAtomic,
  type LoraPlugin,
  type Module,
  type PeftConfigJson,
} from '@lora/core';
import { describeValue } from '@lora/core/internal';
import { BertForSequenceClassification, BertModel, CausalLanguageModel, createModel, loadPretrained, type AnyPretrainedModel } from '@lora/models';
import { CliError, MissingPackageError } from './errors.js';
import { extraPluginPackages, importPackage, loadPluginPackage, pluginsForAdapterConfigs, type PackageLoader } from './plugins.js';
import { recipePackageFor } from './recipe.js';

/** The package providing the 4-bit quantization (`quant`), as the QLoRA recipe names it. */
function quantPackageName(): string {
  const name = recipePackageFor('quant');
  if (!name) throw new CliError('Internal: no recipe names the package of the quant transform.');
  return name;
}

/**
 * Load a Hugging Face model directory with clear one-line errors. A 4-bit checkpoint (with
 * `quantization_config`, as `lora quantize` writes) loads through the quant package as a quantized model.
 */
export async function loadModelDirectory(
  directory: string,
  loader: PackageLoader = importPackage,
  options: { allowNonFinite?: boolean } = {},
): Promise<AnyPretrainedModel> {
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await fs.readFile(path.join(directory, 'config.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    throw new CliError(`Model directory ${directory} has no readable config.json (expected a Hugging Face model directory).`, { exitCode: 2 });
  }
  if (config['quantization_config'] === undefined) {
    try {
      return await loadPretrained(directory, { allowNonFinite: options.allowNonFinite });
    } catch (error) {
      if (error instanceof LoraError) throw new CliError(`Model ${directory} does not load: ${shortMessage(error)}`, { exitCode: 2, cause: error });
      throw error;
    }
  }
  let quantPackage: Record<string, unknown>;
  try {
    quantPackage = (await loader(quantPackageName())) as Record<string, unknown>;
  } catch {
    throw new MissingPackageError(quantPackageName(), `The 4-bit checkpoint in ${directory}`);
  }
  const load = quantPackage['loadQuantizedModel'] as (
    directory: string,
    options: { loadModel: (json: Readonly<Record<string, unknown>>) => AnyPretrainedModel; allowNonFinite?: boolean },
  ) => Promise<{ model: AnyPretrainedModel }>;
  try {
    const { model } = await load(directory, { loadModel: (json) => createModel(json as Parameters<typeof createModel>[0]), allowNonFinite: options.allowNonFinite });
    return model;
  } catch (error) {
    // As a float checkpoint's: an input problem (a damaged file, non-finite weights), in one line.
    if (error instanceof LoraError) throw new CliError(`Model ${directory} does not load: ${shortMessage(error)}`, { exitCode: 2, cause: error });
    throw error;
  }
}

/**
 * Load a model with optional 4-bit base weights and any number of adapters (all active, summed).
 * The caller disposes the returned model.
 */
export async function loadModelWithAdapters(options: {
  modelDirectory: string;
  adapterDirectories: readonly string[];
  quantize?: 'nf4' | 'fp4';
  loader?: PackageLoader;
  /** Third-party plugin packages (`--plugin`), besides core and the recipes' packages. */
  pluginPackages?: readonly string[];
  /** Load NaN/±Infinity weights instead of refusing them (`--allow-non-finite`). */
  allowNonFinite?: boolean;
}): Promise<{ model: AnyPretrainedModel; adapterModel: AdapterModel<AnyPretrainedModel> | null }> {
  const loader = options.loader ?? importPackage;
  // The same adapter twice would be applied twice (its ΔW doubled): surely a slip.
  const seen = new Set<string>();
  for (const directory of options.adapterDirectories) {
    if (seen.has(path.resolve(directory))) throw new CliError(`--adapter ${directory} is given twice; each adapter is applied once, so pass it once.`, { exitCode: 2 });
    seen.add(path.resolve(directory));
  }
  const configs: { file: string; json: PeftConfigJson }[] = [];
  for (const directory of options.adapterDirectories) {
    try {
      configs.push({ file: path.join(directory, ADAPTER_CONFIG_NAME), json: await readAdapterConfig(directory) });
    } catch (error) {
      throw new CliError(`Adapter ${directory}: ${(error as Error).message.replace(/^\[[^\]]+\]\s*/u, '')}`, { exitCode: 2 });
    }
  }
  const plugins: LoraPlugin[] = await pluginsForAdapterConfigs(configs, { loader, extraPackages: extraPluginPackages(options.pluginPackages) });
  if (!plugins.some((plugin) => plugin.name === 'lora')) plugins.unshift(lora());
  if (options.quantize) {
    const descriptor = await loadPluginPackage(quantPackageName(), loader);
    const entry = descriptor?.plugins.find((candidate) => candidate.name === 'quant');
    if (!descriptor || !entry) throw new MissingPackageError(quantPackageName(), '--quantize');
    plugins.push(createDescribedPlugin(descriptor, entry, { type: options.quantize }));
  }
  const model = await loadModelDirectory(options.modelDirectory, loader, { allowNonFinite: options.allowNonFinite });
  if (options.adapterDirectories.length === 0 && !options.quantize) return { model, adapterModel: null };
  try {
    const registry = createLoraRegistry({ plugins });
    const adapterModel = new AdapterModel(model, { registry });
    if (options.quantize) adapterModel.applyBaseTransform(registry.transform('quant'));
    const names: string[] = [];
    for (const [index, directory] of options.adapterDirectories.entries()) {
      const name = index === 0 ? 'default' : `adapter_${index}`;
      try {
        await loadAdapter(adapterModel, directory, { adapterName: name, activate: false, allowNonFinite: options.allowNonFinite });
      } catch (error) {
        if (error instanceof CliError) throw error;
        throw adapterLoadError(directory, options.modelDirectory, configs[index]!.json, error);
      }
      names.push(name);
    }
    if (names.length > 0) adapterModel.setAdapter(names);
    model.eval();
    return { model, adapterModel };
  } catch (error) {
    model.dispose();
    throw error;
  }
}

const nested2d = z.array(z.array(z.number().int()).min(1)).min(1);
const forwardInputSchema = z
  .object({
    input_ids: nested2d,
    attention_mask: nested2d.optional(),
    token_type_ids: nested2d.optional(),
    adapter_inputs: z.record(z.unknown()).optional(),
  })
  .strict();

/**
 * `lora forward` input: `{"input_ids": [[…]], "attention_mask": [[…]], "token_type_ids": [[…]],
 * "adapter_inputs": {…}}`; `adapter_inputs` are the per-forward inputs adapters read (e.g. a
 * condition per row), passed through as they are.
 */
export type ForwardInput = z.infer<typeof forwardInputSchema>;

/** Read and validate a forward input file. @throws {CliError} naming the field. */
export async function readForwardInput(file: string): Promise<ForwardInput> {
  let json: unknown;
  try {
    json = await readJsonFile(file);
  } catch (error) {
    throw new CliError((error as Error).message.replace(/^\[[^\]]+\]\s*/u, ''), { exitCode: 2 });
  }
  const result = forwardInputSchema.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    throw new CliError(`${file}: ${issue.path.join('.') || (issue.code === 'unrecognized_keys' ? issue.keys.join(', ') : '(root)')}: ${issue.message}.`, { exitCode: 2 });
  }
  const input = result.data;
  const width = input.input_ids[0]!.length;
  const { adapter_inputs: _adapterInputs, ...grids } = input;
  for (const [field, rows] of Object.entries(grids)) {
    const ragged = rows.findIndex((row) => row.length !== width);
    if (field === 'input_ids' && ragged >= 0) {
      throw new CliError(`${file}: input_ids must have rows of one length (pad them and pass attention_mask), but row ${ragged} has ${rows[ragged]!.length} ids and row 0 has ${width}.`, { exitCode: 2 });
    }
    if (rows.length !== input.input_ids.length || ragged >= 0) {
      throw new CliError(`${file}: ${field} must be a [${input.input_ids.length}, ${width}] array, the shape of input_ids.`, { exitCode: 2 });
    }
  }
  return input;
}

/** The sizes a forward input must fit: token ids below `vocab`, token types below `types`, rows of at most `positions`. */
function inputLimits(model: Module): { vocab: number; types: number | null; positions: number | null; source: string } | null {
  if (model instanceof CausalLanguageModel) return { vocab: model.vocabSize, types: null, positions: model.maxPositions, source: 'n_positions' };
  if (model instanceof BertForSequenceClassification || model instanceof BertModel) {
    return { vocab: model.config.vocabSize, types: model.config.typeVocabSize, positions: model.config.maxPositionEmbeddings, source: 'max_position_embeddings' };
  }
  return null;
}

/**
 * Refuse token ids the model has no embedding for, and rows longer than its positions, naming the
 * file, the first offending entry and the limit (tfjs would fail inside its gather, or read garbage).
 * @throws {CliError} exit 2.
 */
export function checkForwardInputFits(model: Module, input: ForwardInput, file: string): void {
  const limits = inputLimits(model);
  if (!limits) return;
  const width = input.input_ids[0]!.length;
  if (limits.positions !== null && width > limits.positions) {
    throw new CliError(`${file}: input_ids rows are ${width} tokens, more than the model's ${limits.positions} positions (${limits.source} in its config.json); shorten them.`, { exitCode: 2 });
  }
  const grids: [string, number[][] | undefined, number | null, string][] = [
    ['input_ids', input.input_ids, limits.vocab, 'vocab_size'],
    ['token_type_ids', input.token_type_ids, limits.types, 'type_vocab_size'],
  ];
  for (const [field, rows, size, sizeField] of grids) {
    if (!rows || size === null) continue;
    for (const [r, row] of rows.entries()) {
      const c = row.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= size);
      if (c >= 0) throw new CliError(`${file}: ${field}[${r}][${c}] must be an integer from 0 to ${size - 1} (the model's ${sizeField} is ${size}), got ${row[c]}.`, { exitCode: 2 });
    }
  }
}

/**
 * Run a model on token ids: logits [B, T, V] for language models, [B, C] for classifiers, hidden
 * states for encoders; `adapter_inputs` reach the adapters of the model's `AdapterModel`.
 */
export function forwardLogits(model: Module, input: ForwardInput): tf.Tensor {
  return model.withAdapterInputs(input.adapter_inputs, () => forwardTokens(model, input));
}

function forwardTokens(model: Module, input: ForwardInput): tf.Tensor {
  return tf.tidy(() => {
    const ids = tf.tensor2d(input.input_ids, undefined, 'int32');
    const attentionMask = input.attention_mask ? tf.tensor2d(input.attention_mask, undefined, 'int32') : undefined;
    const tokenTypeIds = input.token_type_ids ? tf.tensor2d(input.token_type_ids, undefined, 'int32') : undefined;
    if (model instanceof CausalLanguageModel) return model.forward(ids, { attentionMask });
    if (model instanceof BertForSequenceClassification || model instanceof BertModel) return model.forward(ids, { attentionMask, tokenTypeIds });
    throw new CliError(`lora forward does not support ${model.constructor.name}.`);
  });
}

function shortMessage(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).replace(/^\[[^\]]+\]\s*/u, '').split('\n')[0]!;
}

function sample(names: readonly string[]): string {
  return names.length === 0 ? '' : `${names.length} (e.g. ${names[0]})`;
}

/**
 * One line for an adapter that does not load: a mismatch with the model is summarised by counts and
 * examples (the full lists can run to thousands of characters) and names the base the adapter was
 * made for; bad files are input errors (exit 2).
 */
export function adapterLoadError(directory: string, modelDirectory: string, config: PeftConfigJson, error: unknown): CliError {
  if (error instanceof CheckpointError) {
    const parts = [
      error.missing.length > 0 ? `missing ${sample(error.missing)}` : '',
      error.unexpected.length > 0 ? `unexpected ${sample(error.unexpected)}` : '',
      error.mismatched.length > 0
        ? `wrong shape ${error.mismatched.length} (e.g. ${error.mismatched[0]!.name}: model [${error.mismatched[0]!.expected.join(', ')}], adapter [${error.mismatched[0]!.received.join(', ')}])`
        : '',
    ].filter(Boolean);
    const base = typeof config['base_model_name_or_path'] === 'string' ? ` It was made for base model "${config['base_model_name_or_path']}".` : '';
    return new CliError(`Adapter ${directory} does not fit the model in ${modelDirectory}: tensors ${parts.join('; ')}.${base} Pass the --model it was trained on.`, {
      exitCode: 2,
      cause: error,
    });
  }
  const base = typeof config['base_model_name_or_path'] === 'string' ? ` (it was made for base model "${config['base_model_name_or_path']}")` : '';
  if (error instanceof ConfigError && error.field === 'target_modules') {
    return new CliError(
      `Adapter ${directory} targets ${describeValue(error.received)}, which the model in ${modelDirectory} does not have${base}. Pass the --model it was trained on.`,
      { exitCode: 2, cause: error },
    );
  }
  const message = shortMessage(error);
  return new CliError(`Adapter ${directory} does not load: ${message.length > 300 ? `${message.slice(0, 297)}...` : message}`, {
    exitCode: error instanceof LoraError ? 2 : 1,
    cause: error,
  });
}

/**
 * `lora quantize` on a checkpoint that already has a `quantization_config` (as `lora quantize`
 * writes): its 4-bit layers would be written again as they are, whatever `--type` and
 * `--block-size` say. Checked before the model loads; a config.json that cannot be read is left to
 * the loader to report.
 * @throws {CliError} exit 2, naming the directory and what it is quantized to (type, block size and
 * double quantization where known).
 */
export async function refuseQuantizedModel(directory: string): Promise<void> {
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await fs.readFile(path.join(directory, 'config.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    return;
  }
  const quantization = config['quantization_config'];
  if (quantization === undefined || quantization === null) return;
  const q = (typeof quantization === 'object' ? quantization : {}) as Record<string, unknown>;
  const bits = q['load_in_4bit'] === true ? '4-bit' : q['load_in_8bit'] === true ? '8-bit' : typeof q['quant_method'] === 'string' ? q['quant_method'] : 'quantized';
  const blockSize = bits === '4-bit' ? await quantStateBlockSize(directory) : null;
  const details = [
    typeof q['bnb_4bit_quant_type'] === 'string' ? `${bits} ${q['bnb_4bit_quant_type']}` : bits,
    blockSize === null ? null : `block size ${blockSize}`,
    q['bnb_4bit_use_double_quant'] === true ? 'double-quantized scales' : null,
  ].filter((item): item is string => item !== null);
  throw new CliError(
    `--model ${directory} is already quantized (${details.join(', ')}: quantization_config in its config.json); lora quantize needs a float checkpoint, so pass the model it was made from.`,
    { exitCode: 2 },
  );
}

const QUANT_STATE_KEY = /\.weight\.quant_state\.bitsandbytes__[a-z0-9]+$/u;

/**
 * The block size of a 4-bit checkpoint, from the first bitsandbytes quant-state blob of its weights
 * (transformers' config does not record it): only the safetensors header and that small blob are
 * read. Null when it cannot be told (no such tensor, a sharded index that does not name one, an
 * unreadable file): it only makes a message more precise.
 */
async function quantStateBlockSize(directory: string): Promise<number | null> {
  try {
    let file = path.join(directory, 'model.safetensors');
    try {
      await fs.access(file);
    } catch {
      const index = JSON.parse(await fs.readFile(path.join(directory, 'model.safetensors.index.json'), 'utf8')) as { weight_map?: Record<string, unknown> };
      const shard = Object.entries(index.weight_map ?? {}).find(([key, value]) => QUANT_STATE_KEY.test(key) && typeof value === 'string')?.[1];
      if (typeof shard !== 'string') return null;
      file = path.join(directory, shard);
    }
    const handle = await fs.open(file, 'r');
    try {
      const prefix = Buffer.alloc(8);
      await handle.read(prefix, 0, 8, 0);
      const headerLength = Number(prefix.readBigUInt64LE(0));
      // safetensors caps its header at 100 MB.
      if (headerLength <= 0 || headerLength > 100_000_000) return null;
      const header = Buffer.alloc(headerLength);
      await handle.read(header, 0, headerLength, 8);
      const entries = JSON.parse(header.toString('utf8')) as Record<string, { data_offsets?: [number, number] }>;
      const offsets = Object.entries(entries).find(([key]) => QUANT_STATE_KEY.test(key))?.[1].data_offsets;
      if (!offsets || offsets[1] - offsets[0] <= 0 || offsets[1] - offsets[0] > 65_536) return null;
      const blob = Buffer.alloc(offsets[1] - offsets[0]);
      await handle.read(blob, 0, blob.length, 8 + headerLength + offsets[0]);
      const blockSize = (JSON.parse(blob.toString('utf8')) as { blocksize?: unknown }).blocksize;
      return typeof blockSize === 'number' && Number.isInteger(blockSize) ? blockSize : null;
    } finally {
      await handle.close();
    }
  } catch {
    return null;
  }
}

/** Files beside a checkpoint's weights that a merged or quantized copy needs to be used the same way. */
const COMPANION_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'vocab.json',
  'merges.txt',
  'vocab.txt',
  'tokenizer.model',
  'generation_config.json',
];

/**
 * Copy the tokenizer and generation files of model directory `from` into `to` (each written
 * atomically); those it lacks are skipped. Returns the names copied.
 */
export async function copyCompanionFiles(from: string, to: string): Promise<string[]> {
  const copied: string[] = [];
  for (const name of COMPANION_FILES) {
    let bytes: Uint8Array;
    try {
      bytes = await fs.readFile(path.join(from, name));
    } catch {
      continue;
    }
    await writeFileAtomic(path.join(to, name), bytes);
    copied.push(name);
  }
  return copied;
}
