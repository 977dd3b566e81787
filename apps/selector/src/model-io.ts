import * as tf from '@tensorflow/tfjs-core';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import {
  ADAPTER_CONFIG_NAME,
  AdapterModel,
  createDescribedPlugin,
  createLoraRegistry,
  loadAdapter,
  lora,
  readAdapterConfig,
  readJsonFile,
  type LoraPlugin,
  type Module,
  type PeftConfigJson,
} from '@lora/core';
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
export async function loadModelDirectory(directory: string, loader: PackageLoader = importPackage): Promise<AnyPretrainedModel> {
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(await fs.readFile(path.join(directory, 'config.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    throw new CliError(`Model directory ${directory} has no readable config.json (expected a Hugging Face model directory).`, { exitCode: 2 });
  }
  if (config['quantization_config'] === undefined) return loadPretrained(directory);
  let quantPackage: Record<string, unknown>;
  try {
    quantPackage = (await loader(quantPackageName())) as Record<string, unknown>;
  } catch {
    throw new MissingPackageError(quantPackageName(), `The 4-bit checkpoint in ${directory}`);
  }
  const load = quantPackage['loadQuantizedModel'] as (
    directory: string,
    options: { loadModel: (json: Readonly<Record<string, unknown>>) => AnyPretrainedModel },
  ) => Promise<{ model: AnyPretrainedModel }>;
  const { model } = await load(directory, { loadModel: (json) => createModel(json as Parameters<typeof createModel>[0]) });
  return model;
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
}): Promise<{ model: AnyPretrainedModel; adapterModel: AdapterModel<AnyPretrainedModel> | null }> {
  const loader = options.loader ?? importPackage;
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
  const model = await loadModelDirectory(options.modelDirectory, loader);
  if (options.adapterDirectories.length === 0 && !options.quantize) return { model, adapterModel: null };
  try {
    const registry = createLoraRegistry({ plugins });
    const adapterModel = new AdapterModel(model, { registry });
    if (options.quantize) adapterModel.applyBaseTransform(registry.transform('quant'));
    const names: string[] = [];
    for (const [index, directory] of options.adapterDirectories.entries()) {
      const name = index === 0 ? 'default' : `adapter_${index}`;
      try {
        await loadAdapter(adapterModel, directory, { adapterName: name, activate: false });
      } catch (error) {
        if (error instanceof CliError) throw error;
        throw new CliError(`Adapter ${directory} does not load: ${(error as Error).message.replace(/^\[[^\]]+\]\s*/u, '')}`, { cause: error });
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
    if (rows.length !== input.input_ids.length || rows.some((row) => row.length !== width)) {
      throw new CliError(`${file}: ${field} must be a rectangular [${input.input_ids.length}, ${width}] array like input_ids.`, { exitCode: 2 });
    }
  }
  return input;
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

/** Replace `directory` with the result of `write(staging)` so a failure leaves no partial directory. */
export async function writeDirectoryAtomically(directory: string, write: (staging: string) => Promise<void>, options: { overwrite?: boolean } = {}): Promise<void> {
  const target = path.resolve(directory);
  let exists = false;
  try {
    exists = (await fs.readdir(target)).length > 0;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOTDIR') throw new CliError(`${target} is a file, not a directory.`, { exitCode: 2 });
  }
  if (exists && !options.overwrite) throw new CliError(`Output directory ${target} exists and is not empty; pass --overwrite or choose another --out.`, { exitCode: 2 });
  const staging = `${target}.partial-${randomBytes(4).toString('hex')}`;
  try {
    await write(staging);
    await fs.rm(target, { recursive: true, force: true });
    await fs.rename(staging, target);
  } catch (error) {
    await fs.rm(staging, { recursive: true, force: true });
    throw error;
  }
}
