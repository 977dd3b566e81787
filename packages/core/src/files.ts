import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { LoraError, SafetensorsError } from './errors.js';
import { parseSafetensors, serializeSafetensors, type SafetensorsEntry, type SafetensorsFile } from './safetensors.js';

/** A file-system step of a save where a test can inject a failure or a simulated kill. */
export interface FaultPoint {
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
 * directory for syncing (Windows) skip it.
 */
export async function syncDirectory(directory: string): Promise<void> {
  faultPoint('sync-directory', directory);
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(directory, 'r');
  } catch (error) {
    if (['EISDIR', 'EPERM', 'EACCES', 'ENOTSUP', 'EINVAL'].includes((error as NodeJS.ErrnoException).code ?? '')) return;
    throw error;
  }
  try {
    await handle.sync();
  } catch (error) {
    if (!['EINVAL', 'ENOTSUP', 'EPERM', 'EBADF'].includes((error as NodeJS.ErrnoException).code ?? '')) throw error;
  } finally {
    await handle.close();
  }
}

/**
 * Write a file atomically: the bytes go to a temporary file in the same directory, which is
 * flushed (fsync) and renamed over `target`; then the directory is flushed so the rename itself
 * survives a power cut. If anything fails, `target` keeps its previous contents and the temporary
 * file is removed.
 *
 * `data` may be an iterable of chunks, written in order.
 */
export async function writeFileAtomic(target: string, data: Uint8Array | string | Iterable<Uint8Array | string>): Promise<void> {
  const directory = path.dirname(target);
  faultPoint('mkdir', directory);
  await fs.mkdir(directory, { recursive: true });
  const temporary = path.join(directory, `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  faultPoint('open', temporary);
  const handle = await fs.open(temporary, 'w');
  try {
    try {
      const chunks = typeof data === 'string' || data instanceof Uint8Array ? [data] : data;
      for (const chunk of chunks) {
        faultPoint('write', temporary);
        await handle.write(typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk);
      }
      faultPoint('sync', temporary);
      await handle.sync();
    } finally {
      // Always closed: a descriptor is not state a killed process leaves behind.
      await handle.close();
    }
    faultPoint('rename', target);
    await fs.rename(temporary, target);
  } catch (error) {
    faultPoint('remove', temporary);
    await fs.rm(temporary, { force: true });
    throw error;
  }
  await syncDirectory(directory);
}

/** Whether a file or directory exists (and can be seen). */
export async function pathExists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}

/** Write a JSON value atomically, pretty-printed with 2 spaces and a trailing newline. */
export function writeJsonAtomic(target: string, value: unknown): Promise<void> {
  return writeFileAtomic(target, `${JSON.stringify(value, null, 2)}\n`);
}

/**
 * Read and parse a safetensors file.
 * @throws {SafetensorsError} naming the file when malformed; {LoraError} when the file cannot be read.
 */
export async function readSafetensorsFile(file: string): Promise<SafetensorsFile> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (error) {
    throw new LoraError(`[@lora/core] Cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}.`, { cause: error });
  }
  try {
    return parseSafetensors(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
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
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    throw new LoraError(`[@lora/core] Cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}.`, { cause: error });
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new LoraError(`[@lora/core] ${file} is not valid JSON: ${(error as Error).message}.`, { cause: error });
  }
}
