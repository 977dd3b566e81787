import { promises as fs } from 'node:fs';
import path from 'node:path';
import { ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, readSafetensorsFile, type SafetensorsEntry } from '@lora/core';
import { readCheckpointTensors } from '@lora/models';
import { CliError } from './errors.js';
import { formatBytes } from './measure.js';

/** A summary of a model or adapter directory. */
export interface InspectResult {
  readonly kind: 'adapter' | 'model';
  readonly type: string;
  readonly parameters: number;
  readonly bytes: number;
  readonly tensors: number;
  readonly dtypes: Readonly<Record<string, number>>;
  /** Adapter only: targeted module paths and the rank found at each. */
  readonly targets?: readonly { readonly module: string; readonly rank: number }[];
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
 * Inspect a directory: a PEFT adapter (type, targets, ranks, parameter count, bytes) or a Hugging
 * Face model (architecture, parameter count, bytes by dtype).
 * @throws {CliError} when the directory holds neither.
 */
export async function inspectDirectory(directory: string): Promise<InspectResult> {
  const has = async (name: string) =>
    fs.access(path.join(directory, name)).then(
      () => true,
      () => false,
    );
  if (await has(ADAPTER_CONFIG_NAME)) {
    const config = await readConfig(path.join(directory, ADAPTER_CONFIG_NAME));
    const file = await named(path.join(directory, ADAPTER_WEIGHTS_NAME), () => readSafetensorsFile(path.join(directory, ADAPTER_WEIGHTS_NAME)));
    const targets: { module: string; rank: number }[] = [];
    for (const [key, entry] of file.tensors) {
      const match = /^base_model\.model\.(.+)\.lora_A(?:\.weight)?$/u.exec(key);
      if (match) targets.push({ module: match[1]!, rank: entry.shape[0] ?? 0 });
    }
    const type = `${String(config['peft_type'])}${config['use_dora'] === true ? ' (DoRA)' : ''}`;
    return { kind: 'adapter', type, ...summarise(file.tensors), tensors: file.tensors.size, targets, config };
  }
  if (await has('config.json')) {
    const config = await readConfig(path.join(directory, 'config.json'));
    const tensors = await named(directory, () => readCheckpointTensors(directory));
    const architectures = config['architectures'];
    const type = Array.isArray(architectures) && typeof architectures[0] === 'string' ? architectures[0] : String(config['model_type'] ?? 'unknown');
    return { kind: 'model', type, ...summarise(tensors), tensors: tensors.size, config };
  }
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
    const byRank = new Map<number, number>();
    for (const target of result.targets) byRank.set(target.rank, (byRank.get(target.rank) ?? 0) + 1);
    lines.push(`Targets: ${result.targets.length} modules; ranks ${[...byRank].map(([rank, count]) => `${rank} ×${count}`).join(', ')}`);
    for (const target of result.targets) lines.push(`  ${target.module}  r=${target.rank}`);
    const fields = ['target_modules', 'lora_alpha', 'lora_dropout', 'task_type', 'base_model_name_or_path'];
    for (const field of fields) if (field in result.config) lines.push(`${field}: ${JSON.stringify(result.config[field])}`);
  }
  return lines.join('\n');
}
