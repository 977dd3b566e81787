import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { LoraError } from './errors.js';
import { parseSafetensors, serializeSafetensors, type SafetensorsEntry, type SafetensorsFile } from './safetensors.js';

/**
 * Write a file atomically: the bytes go to a temporary file in the same directory, which is
 * flushed and then renamed over `target`. If anything fails, `target` keeps its previous
 * contents and the temporary file is removed.
 *
 * `data` may be an iterable of chunks, written in order.
 */
export async function writeFileAtomic(target: string, data: Uint8Array | string | Iterable<Uint8Array | string>): Promise<void> {
  const directory = path.dirname(target);
  await fs.mkdir(directory, { recursive: true });
  const temporary = path.join(directory, `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await fs.open(temporary, 'w');
  try {
    try {
      const chunks = typeof data === 'string' || data instanceof Uint8Array ? [data] : data;
      for (const chunk of chunks) await handle.write(typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(temporary, target);
  } catch (error) {
    await fs.rm(temporary, { force: true });
    throw error;
  }
}

/** Write a JSON value atomically, pretty-printed with 2 spaces and a trailing newline. */
export function writeJsonAtomic(target: string, value: unknown): Promise<void> {
  return writeFileAtomic(target, `${JSON.stringify(value, null, 2)}\n`);
}

/**
 * Read and parse a safetensors file.
 * @throws {SafetensorsError} when malformed; {LoraError} when the file cannot be read.
 */
export async function readSafetensorsFile(file: string): Promise<SafetensorsFile> {
  let bytes: Buffer;
  try {
    bytes = await fs.readFile(file);
  } catch (error) {
    throw new LoraError(`[@lora/core] Cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}.`, { cause: error });
  }
  return parseSafetensors(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
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
