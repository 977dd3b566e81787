import { promises as fs } from 'node:fs';
import path from 'node:path';
import {
  ADAPTER_CONFIG_NAME,
  ADAPTER_WEIGHTS_NAME,
  findPluginForPeftConfig,
  isTargetModule,
  readAdapterConfig,
  readSafetensorsFile,
  type AdapterPlugin,
  type PeftConfigJson,
  type SafetensorsEntry,
} from '@lora/core';
import { readCheckpointTensors } from '@lora/models';
import { CliError } from './errors.js';
import { formatBytes } from './measure.js';
import { installedPluginPackages, type PackageLoader } from './plugins.js';

const MODEL_PREFIX = 'base_model.model.';

/** A summary of a model or adapter directory. */
export interface InspectResult {
  /** `adapter` when the directory has `adapter_config.json` (checked first), `model` when it has `config.json`. */
  readonly kind: 'adapter' | 'model';
  /** Adapter: its `peft_type`, plus ` (DoRA)` when `use_dora` is set; model: the first of `architectures`, else `model_type`, else `unknown`. */
  readonly type: string;
  /** Total elements of all the weight tensors. */
  readonly parameters: number;
  /** Total bytes of tensor data (safetensors headers excluded). */
  readonly bytes: number;
  /** Number of tensors in the weights. */
  readonly tensors: number;
  /** Elements per safetensors dtype, e.g. `{ F32: 294912 }`. */
  readonly dtypes: Readonly<Record<string, number>>;
  /** Adapter only: targeted module paths and the rank found at each (null when the type has no rank). */
  readonly targets?: readonly {
    /** Module path without PEFT's `base_model.model.` prefix, e.g. `transformer.h.0.attn.c_attn`. */
    readonly module: string;
    /** The rank read from its tensors (the plugin's `savedRank`, else the first dimension of `lora_A`), or null. */
    readonly rank: number | null;
  }[];
  /** Adapter only: the installed plugin that reads it, or null when none does. */
  readonly reader?: string | null;
  /** The directory's `adapter_config.json` or `config.json`, as read. */
  readonly config: Readonly<Record<string, unknown>>;
}

function summarise(tensors: ReadonlyMap<string, SafetensorsEntry>): { parameters: number; bytes: number; dtypes: Record<string, number> } {
  let parameters = 0;
  let bytes = 0;
  const dtypes: Record<string, number> = {};
  for (const entry of tensors.values()) {
    const size = entry.shape.reduce((a, b) => a * b, 1);
    parameters += size;
    bytes += entry.data.byteLength;
    dtypes[entry.dtype] = (dtypes[entry.dtype] ?? 0) + size;
  }
  return { parameters, bytes, dtypes };
}

/** Run a read, turning any failure into a one-line input error that names `file`. */
async function named<T>(file: string, read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (error) {
    const message = (error instanceof Error ? error.message : String(error)).replace(/^\[[^\]]+\]\s*/u, '');
    throw new CliError(message.includes(file) ? message : `${file}: ${message}`, { exitCode: 2, cause: error });
  }
}

async function readConfig(file: string): Promise<Record<string, unknown>> {
  const json = await named(file, async () => JSON.parse(await fs.readFile(file, 'utf8')) as unknown);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new CliError(`${file}: expected a JSON object.`, { exitCode: 2 });
  return json as Record<string, unknown>;
}

/**
 * The targeted modules of a saved adapter and the rank at each, for any adapter type: module paths
 * are found from the tensor keys by the saved config's own target rules (PEFT's matching), ranks by
 * the reading plugin's `savedRank` (default: the first dimension of `lora_A.weight`).
 */
function adapterTargets(tensors: ReadonlyMap<string, SafetensorsEntry>, plugin: AdapterPlugin | null, json: PeftConfigJson): { module: string; rank: number | null }[] {
  const selection = plugin ? plugin.fromPeftJson(json) : null;
  const byModule = new Map<string, Map<string, readonly number[]>>();
  for (const [key, entry] of tensors) {
    if (!key.startsWith(MODEL_PREFIX)) continue;
    const segments = key.slice(MODEL_PREFIX.length).split('.');
    // The module is the longest key prefix the config targets; without a reader, the part before the first `lora_` segment.
    let cut = -1;
    for (let end = segments.length - 1; end > 0 && cut < 0; end--) {
      const candidate = segments.slice(0, end).join('.');
      if (selection ? isTargetModule(candidate, selection) : segments[end]!.startsWith('lora_')) cut = end;
    }
    if (cut < 0) continue;
    const module = segments.slice(0, cut).join('.');
    const shapes = byModule.get(module) ?? new Map<string, readonly number[]>();
    shapes.set(segments.slice(cut).join('.'), entry.shape);
    byModule.set(module, shapes);
  }
  return [...byModule].map(([module, shapes]) => ({
    module,
    rank: plugin?.savedRank ? plugin.savedRank(shapes) : (shapes.get('lora_A.weight')?.[0] ?? shapes.get('lora_A')?.[0] ?? null),
  }));
}

/**
 * Inspect a directory: a PEFT adapter (type, targets, ranks, parameter count, bytes) or a Hugging
 * Face model (architecture, parameter count, bytes by dtype). The plugin that reads an adapter is
 * found through the installed packages' descriptors (plus `extraPackages`); without one, targets
 * are still listed from the tensor names.
 * @throws {CliError} naming the path when the directory holds neither or a file is malformed.
 */
export async function inspectDirectory(
  directory: string,
  options: { loader?: PackageLoader; extraPackages?: readonly string[] } = {},
): Promise<InspectResult> {
  const has = async (name: string) =>
    fs.access(path.join(directory, name)).then(
      () => true,
      () => false,
    );
  if (await has(ADAPTER_CONFIG_NAME)) {
    const configFile = path.join(directory, ADAPTER_CONFIG_NAME);
    const config = await named(configFile, () => readAdapterConfig(directory));
    const weights = path.join(directory, ADAPTER_WEIGHTS_NAME);
    const file = await named(weights, () => readSafetensorsFile(weights));
    const descriptors = await installedPluginPackages(options);
    const plugin = findPluginForPeftConfig(descriptors, config)?.plugin ?? null;
    const targets = adapterTargets(file.tensors, plugin, config);
    const type = `${String(config.peft_type)}${config['use_dora'] === true ? ' (DoRA)' : ''}`;
    return {
      kind: 'adapter',
      type,
      reader: plugin ? `${plugin.name} (${plugin.packageName})` : null,
      ...summarise(file.tensors),
      tensors: file.tensors.size,
      targets,
      config,
    };
  }
  if (await has('config.json')) {
    const config = await readConfig(path.join(directory, 'config.json'));
    const tensors = await named(directory, () => readCheckpointTensors(directory));
    const architectures = config['architectures'];
    const type = Array.isArray(architectures) && typeof architectures[0] === 'string' ? architectures[0] : String(config['model_type'] ?? 'unknown');
    return { kind: 'model', type, ...summarise(tensors), tensors: tensors.size, config };
  }
  const exists = await fs.stat(directory).then(
    (stats) => (stats.isDirectory() ? 'directory' : 'file'),
    () => null,
  );
  if (exists === null) throw new CliError(`${directory} does not exist; give a model or adapter directory.`, { exitCode: 2 });
  if (exists === 'file') throw new CliError(`${directory} is a file; give the directory that holds it (a model's config.json or an adapter's adapter_config.json).`, { exitCode: 2 });
  throw new CliError(`${directory} holds neither an adapter (adapter_config.json) nor a model (config.json).`, { exitCode: 2 });
}

/** Human-readable form of {@link inspectDirectory}'s result. */
export function formatInspection(result: InspectResult): string {
  const lines = [
    `${result.kind === 'adapter' ? 'Adapter' : 'Model'}: ${result.type}`,
    `Parameters: ${result.parameters.toLocaleString('en-US')} in ${result.tensors} tensors (${formatBytes(result.bytes)})`,
    `Dtypes: ${Object.entries(result.dtypes).map(([dtype, count]) => `${dtype} ${count.toLocaleString('en-US')}`).join(', ')}`,
  ];
  if (result.targets) {
    const byRank = new Map<number | null, number>();
    for (const target of result.targets) byRank.set(target.rank, (byRank.get(target.rank) ?? 0) + 1);
    lines.push(`Read by: ${result.reader ?? 'no installed plugin (install the package that saved it, or pass --plugin <package>)'}`);
    if (result.targets.length === 0) {
      // A HyperLoRA saves its generator, not factors per module.
      lines.push(`Targets: no per-module factors in the weights; target_modules ${JSON.stringify(result.config['target_modules'] ?? null)}`);
    } else lines.push(`Targets: ${result.targets.length} modules; ranks ${[...byRank].map(([rank, count]) => `${rank ?? 'n/a'} ×${count}`).join(', ')}`);
    for (const target of result.targets) lines.push(`  ${target.module}  r=${target.rank ?? 'n/a'}`);
    const fields = ['target_modules', 'lora_alpha', 'lora_dropout', 'task_type', 'base_model_name_or_path'];
    for (const field of fields) if (field in result.config) lines.push(`${field}: ${JSON.stringify(result.config[field])}`);
  }
  const quantization = result.kind === 'model' ? result.config['quantization_config'] : undefined;
  if (quantization !== null && typeof quantization === 'object') {
    const q = quantization as Record<string, unknown>;
    const bits = q['load_in_4bit'] === true ? '4-bit' : q['load_in_8bit'] === true ? '8-bit' : 'quantized';
    const details = [q['bnb_4bit_quant_type'], q['bnb_4bit_use_double_quant'] === true ? 'double-quantized scales' : null].filter((item) => typeof item === 'string');
    // The counts above are of stored elements: packed codes and scales, not weights.
    lines.push(`Quantization: ${bits} ${String(q['quant_method'] ?? '')}${details.length > 0 ? ` (${details.join(', ')})` : ''}; parameters above count stored elements (packed codes, scales)`.replace(/ {2,}/gu, ' '));
  }
  return lines.join('\n');
}
