import { LoraError, SafetensorsError } from './errors.js';
import { fileHost } from './file-host.js';
import { parseSafetensors, serializeSafetensors, type SafetensorsEntry, type SafetensorsFile } from './safetensors.js';

/** A file-system step of a save where a test can inject a failure or a simulated kill. */
export interface FaultPoint {
  /**
   * The step about to run: an atomic write's `mkdir` (of the target's directory), `open`, `write` (once per
   * chunk), `sync`, `rename` and `sync-directory`, `remove` (of the temporary file, after a failure), or
   * `train-step` (before each optimizer step of `train()`).
   */
  readonly operation: 'mkdir' | 'open' | 'write' | 'sync' | 'rename' | 'remove' | 'sync-directory' | 'train-step';
  /** The path the step acts on (for `train-step`, the 1-based step about to run). */
  readonly path: string;
}

/** Called before every step of a save; throwing fails that step. */
export type FaultInjector = (point: FaultPoint) => void;

// On globalThis so the ESM and CJS builds (and every chunk) share one seam.
const INJECTOR = Symbol.for('@lora/core.faultInjector');

/**
 * Install (or remove, with null) the test seam that every atomic save calls before each
 * file-system step. Production code never sets it.
 */
export function setFaultInjector(injector: FaultInjector | null): void {
  (globalThis as Record<symbol, unknown>)[INJECTOR] = injector ?? undefined;
}

/** Announce a save step to the fault injector, if one is installed (it may throw). */
export function faultPoint(operation: FaultPoint['operation'], target: string): void {
  const injector = (globalThis as Record<symbol, unknown>)[INJECTOR] as FaultInjector | undefined;
  injector?.({ operation, path: target });
}

/**
 * Flush a directory's entries (a rename or a new file in it) to disk. Platforms that cannot open a
 * directory for syncing (Windows) skip it. Needs Node (throws a {@link LoraError} elsewhere).
 */
export function syncDirectory(directory: string): Promise<void> {
  return fileHost().syncDirectory(directory);
}

/**
 * Write a file atomically: the bytes go to a temporary file in the same directory, which is
 * flushed (fsync) and renamed over `target`; then the directory is flushed so the rename itself
 * survives a power cut. If anything fails, `target` keeps its previous contents and the temporary
 * file is removed. Needs Node (throws a {@link LoraError} elsewhere).
 *
 * `data` may be an iterable of chunks, written in order.
 */
export function writeFileAtomic(target: string, data: Uint8Array | string | Iterable<Uint8Array | string>): Promise<void> {
  return fileHost().writeFileAtomic(target, data);
}

/** Whether a file or directory exists (and can be seen). */
export function pathExists(file: string): Promise<boolean> {
  return fileHost().exists(file);
}

/** Write a JSON value atomically, pretty-printed with 2 spaces and a trailing newline. */
export function writeJsonAtomic(target: string, value: unknown): Promise<void> {
  return writeFileAtomic(target, `${JSON.stringify(value, null, 2)}\n`);
}

/** Read a file, naming it in the error when it cannot be read. */
async function readNamed<T>(file: string, read: (file: string) => Promise<T>): Promise<T> {
  try {
    return await read(file);
  } catch (error) {
    if (error instanceof LoraError) throw error;
    throw new LoraError(`[@lora/core] Cannot read ${file}: ${(error as { code?: string }).code ?? String(error)}.`, { cause: error });
  }
}

/**
 * Read and parse a safetensors file. Needs Node; elsewhere parse bytes with `parseSafetensors`.
 * @throws {SafetensorsError} naming the file when malformed; {LoraError} when the file cannot be read.
 */
export async function readSafetensorsFile(file: string): Promise<SafetensorsFile> {
  const host = fileHost();
  const bytes = await readNamed(file, (name) => host.readFile(name));
  try {
    return parseSafetensors(bytes);
  } catch (error) {
    throw error instanceof SafetensorsError && error.file === undefined ? error.withFile(file) : error;
  }
}

/** Serialise and write a safetensors file atomically. */
export function writeSafetensorsFile(
  file: string,
  tensors: ReadonlyMap<string, SafetensorsEntry> | Readonly<Record<string, SafetensorsEntry>>,
  metadata: Readonly<Record<string, string>> = { format: 'pt' },
): Promise<void> {
  return writeFileAtomic(file, serializeSafetensors(tensors, metadata));
}

/**
 * Read a JSON file.
 * @throws {LoraError} naming the file when it is missing or not valid JSON.
 */
export async function readJsonFile(file: string): Promise<unknown> {
  const host = fileHost();
  return parseJsonText(await readNamed(file, (name) => host.readText(name)), file);
}

/**
 * Parse JSON text read from `source` (a file name or a description, for the message).
 * @throws {LoraError} naming the source when the text is not valid JSON.
 */
export function parseJsonText(text: string, source: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new LoraError(`[@lora/core] ${source} is not valid JSON: ${(error as Error).message}.`, { cause: error });
  }
}
