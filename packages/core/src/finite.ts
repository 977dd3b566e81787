import { NonFiniteTensorError, SafetensorsError } from './errors.js';
import type { SafetensorsEntry } from './safetensors.js';

/** Options for {@link checkLoadedTensors}. */
export interface LoadedTensorCheckOptions {
  /** The file the tensors came from, named in errors. */
  readonly file?: string;
  /** Accept NaN and ±Infinity (default false: they are an error). */
  readonly allowNonFinite?: boolean;
  /** Every tensor must be F32, F16 or BF16 (default false), e.g. adapter weights. */
  readonly floatOnly?: boolean;
  /** Package named in errors (default `@lora/core`). */
  readonly plugin?: string;
}

// Exponent bits all ones means NaN or ±Infinity, in each float format.
const FLOAT_FORMATS = {
  F32: { bytes: 4, mask: 0x7f800000 },
  F16: { bytes: 2, mask: 0x7c00 },
  BF16: { bytes: 2, mask: 0x7f80 },
} as const;

function decode(dtype: keyof typeof FLOAT_FORMATS, bits: number): number {
  const sign = dtype === 'F32' ? bits >>> 31 : bits >>> 15;
  const fraction = dtype === 'F32' ? bits & 0x7fffff : dtype === 'F16' ? bits & 0x3ff : bits & 0x7f;
  if (fraction !== 0) return Number.NaN;
  return sign ? Number.NEGATIVE_INFINITY : Number.POSITIVE_INFINITY;
}

/**
 * Count the NaN and ±Infinity values of a float entry from their bit patterns (no decoding), and
 * return the first one. Integer dtypes are always finite.
 */
export function countNonFinite(entry: SafetensorsEntry): {
  /** How many values are NaN or ±Infinity (0 for integer dtypes). */
  count: number;
  /** The first such value in storage order (NaN, Infinity or -Infinity), or null when there is none. */
  first: number | null;
} {
  const format = (FLOAT_FORMATS as Record<string, { bytes: number; mask: number }>)[entry.dtype];
  if (!format) return { count: 0, first: null };
  const view = new DataView(entry.data.buffer, entry.data.byteOffset, entry.data.byteLength);
  const length = entry.data.byteLength / format.bytes;
  let count = 0;
  let first: number | null = null;
  for (let i = 0; i < length; i++) {
    const bits = format.bytes === 4 ? view.getUint32(i * 4, true) : view.getUint16(i * 2, true);
    if ((bits & format.mask) === format.mask) {
      count += 1;
      first ??= decode(entry.dtype as keyof typeof FLOAT_FORMATS, bits);
    }
  }
  return { count, first };
}

/**
 * Check tensors read from a model or adapter file before they are used: no NaN or ±Infinity
 * (unless `allowNonFinite`), and with `floatOnly` no integer dtype where weights are expected.
 *
 * @throws {NonFiniteTensorError} naming the file, the tensor and the count of non-finite values.
 * @throws {SafetensorsError} `UNEXPECTED_DTYPE` naming the file, tensor and dtype found.
 * @example
 * checkLoadedTensors(file.tensors, { file: 'adapter_model.safetensors', floatOnly: true });
 */
export function checkLoadedTensors(entries: ReadonlyMap<string, SafetensorsEntry>, options: LoadedTensorCheckOptions = {}): void {
  for (const [name, entry] of entries) {
    if (options.floatOnly && !(entry.dtype in FLOAT_FORMATS)) {
      throw new SafetensorsError('UNEXPECTED_DTYPE', `dtype ${entry.dtype} where a float dtype (F32, F16 or BF16) is expected.`, {
        tensor: name,
        file: options.file,
      });
    }
    if (options.allowNonFinite) continue;
    const { count, first } = countNonFinite(entry);
    if (count > 0) throw new NonFiniteTensorError({ file: options.file, tensor: name, count, found: first!, plugin: options.plugin });
  }
}

/**
 * Refuse to write tensors holding NaN or ±Infinity (finite or nothing: a save never keeps them,
 * whatever was allowed when loading). Call it on everything a save writes before it writes anything.
 *
 * @throws {NonFiniteTensorError} naming the file, the first such tensor and its count of non-finite values.
 * @example
 * checkTensorsToSave(entries, { file: 'out/model.safetensors' });
 */
export function checkTensorsToSave(entries: ReadonlyMap<string, SafetensorsEntry>, options: { file?: string | undefined; plugin?: string | undefined } = {}): void {
  for (const [name, entry] of entries) {
    const { count, first } = countNonFinite(entry);
    if (count > 0) throw new NonFiniteTensorError({ file: options.file, tensor: name, count, found: first!, plugin: options.plugin, saving: true });
  }
}
