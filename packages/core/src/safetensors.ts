import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, describeValue, SafetensorsError } from './errors.js';

/** Element types this library reads and writes. */
export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'U8';

const DTYPE_SIZES: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1 };
// The safetensors library orders tensors by dtype (descending enum order), then by name.
const DTYPE_ORDER: Record<SafetensorsDtype, number> = { U8: 1, F16: 7, BF16: 8, I32: 9, F32: 11, I64: 13 };
const MAX_HEADER_BYTES = 100_000_000;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** One tensor of a safetensors file: its dtype, shape and raw little-endian bytes. */
export interface SafetensorsEntry {
  /** The element type as the file names it, e.g. `F32` or `BF16`. */
  readonly dtype: SafetensorsDtype;
  /** Dimensions, outermost first (row-major); `[]` for a scalar. */
  readonly shape: readonly number[];
  /** The raw bytes, little-endian: exactly (product of `shape`) × (bytes per element of `dtype`). */
  readonly data: Uint8Array;
}

/** A parsed safetensors file. */
export interface SafetensorsFile {
  /** The `__metadata__` string map ({} when absent). */
  readonly metadata: Readonly<Record<string, string>>;
  /** Tensors by name, in file order. */
  readonly tensors: ReadonlyMap<string, SafetensorsEntry>;
}

function isDtype(value: unknown): value is SafetensorsDtype {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_SIZES, value);
}

/**
 * Parse a safetensors buffer strictly: the header length, JSON, dtypes, shapes and byte ranges
 * are all checked, and the data ranges must tile the data section without gaps or overlaps.
 * Tensor data is copied out, so the result does not keep `bytes` alive.
 *
 * @throws {SafetensorsError} with a `code` saying what is wrong; nothing else is thrown.
 */
export function parseSafetensors(bytes: Uint8Array): SafetensorsFile {
  try {
    return parseStrictly(bytes);
  } catch (error) {
    if (error instanceof SafetensorsError) throw error;
    // A header can be built to exhaust the engine (nesting, sizes); whatever it throws is still a bad file.
    throw new SafetensorsError('INVALID_HEADER', `the header could not be read (${error instanceof Error ? error.name : 'error'}).`, { cause: error });
  }
}

function parseStrictly(bytes: Uint8Array): SafetensorsFile {
  if (bytes.byteLength < 8) {
    throw new SafetensorsError('TRUNCATED', `the file has ${bytes.byteLength} bytes, fewer than the 8-byte header length.`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) {
    throw new SafetensorsError('HEADER_TOO_LARGE', `the header claims ${headerLength} bytes (limit ${MAX_HEADER_BYTES}).`);
  }
  const headerEnd = 8 + Number(headerLength);
  if (headerEnd > bytes.byteLength) {
    throw new SafetensorsError(
      'TRUNCATED',
      `the header claims ${headerLength} bytes but only ${bytes.byteLength - 8} follow the length field.`,
    );
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, headerEnd)));
  } catch (error) {
    throw new SafetensorsError('INVALID_HEADER', 'the header is not valid UTF-8 JSON.', { cause: error });
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new SafetensorsError('INVALID_HEADER', 'the header must be a JSON object.');
  }
  const dataLength = bytes.byteLength - headerEnd;
  const metadata: Record<string, string> = {};
  const ranges: { name: string; begin: number; end: number; dtype: SafetensorsDtype; shape: number[] }[] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
        throw new SafetensorsError('INVALID_HEADER', '__metadata__ must be an object of strings.');
      }
      for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof value !== 'string') {
          throw new SafetensorsError('INVALID_HEADER', `__metadata__.${key} must be a string, got ${typeof value}.`);
        }
        // defineProperty: a key such as "__proto__" stays an ordinary entry and round-trips.
        Object.defineProperty(metadata, key, { value, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
      throw new SafetensorsError('INVALID_HEADER', 'the entry must be an object with dtype, shape and data_offsets.', { tensor: name });
    }
    const entry = raw as Record<string, unknown>;
    if (!isDtype(entry['dtype'])) {
      throw new SafetensorsError(
        'UNKNOWN_DTYPE',
        `dtype ${describeValue(entry['dtype'])} is not supported (supported: ${Object.keys(DTYPE_SIZES).join(', ')}).`,
        { tensor: name },
      );
    }
    const shape = entry['shape'];
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw new SafetensorsError('INVALID_SHAPE', `shape must be an array of non-negative integers, got ${describeValue(shape)}.`, {
        tensor: name,
      });
    }
    const offsets = entry['data_offsets'];
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && (o as number) >= 0) ||
      (offsets[0] as number) > (offsets[1] as number)
    ) {
      throw new SafetensorsError('INVALID_OFFSETS', `data_offsets must be [begin, end] with 0 <= begin <= end, got ${describeValue(offsets)}.`, {
        tensor: name,
      });
    }
    const [begin, end] = offsets as [number, number];
    if (end > dataLength) {
      throw new SafetensorsError('INVALID_OFFSETS', `data_offsets [${begin}, ${end}] run past the ${dataLength}-byte data section.`, {
        tensor: name,
      });
    }
    const elements = (shape as number[]).reduce((a, b) => a * b, 1);
    const expectedBytes = elements * DTYPE_SIZES[entry['dtype']];
    if (end - begin !== expectedBytes) {
      throw new SafetensorsError(
        'SIZE_MISMATCH',
        `shape [${(shape as number[]).join(', ')}] of ${entry['dtype']} needs ${expectedBytes} bytes but data_offsets span ${end - begin}.`,
        { tensor: name },
      );
    }
    ranges.push({ name, begin, end, dtype: entry['dtype'], shape: shape as number[] });
  }
  // Ranges must tile [0, dataLength): sort by (begin, end) so empty tensors sharing an offset are fine.
  const sorted = [...ranges].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const range of sorted) {
    if (range.begin !== cursor) {
      throw new SafetensorsError(
        'INVALID_OFFSETS',
        range.begin < cursor
          ? `data_offsets [${range.begin}, ${range.end}] overlap the previous tensor, which ends at ${cursor}.`
          : `data_offsets [${range.begin}, ${range.end}] leave a gap after byte ${cursor}.`,
        { tensor: range.name },
      );
    }
    cursor = range.end;
  }
  if (cursor !== dataLength) {
    throw new SafetensorsError('INVALID_OFFSETS', `the tensors cover ${cursor} bytes but the data section has ${dataLength}.`);
  }
  const tensors = new Map<string, SafetensorsEntry>();
  for (const range of ranges) {
    tensors.set(range.name, {
      dtype: range.dtype,
      shape: range.shape,
      data: bytes.slice(headerEnd + range.begin, headerEnd + range.end),
    });
  }
  return { metadata, tensors };
}

/**
 * Serialise tensors the way the safetensors library does: 8-byte little-endian header length,
 * compact JSON header (`__metadata__` first, then tensors by descending dtype and name),
 * padded with spaces to a multiple of 8, then the raw data in the same order.
 */
export function serializeSafetensors(
  tensors: ReadonlyMap<string, SafetensorsEntry> | Readonly<Record<string, SafetensorsEntry>>,
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array {
  const entries: [string, SafetensorsEntry][] =
    tensors instanceof Map ? [...(tensors as ReadonlyMap<string, SafetensorsEntry>).entries()] : Object.entries(tensors as Record<string, SafetensorsEntry>);
  // The format's metadata is strings only, and parseSafetensors (like the Python library) refuses
  // anything else: written, a number would make a file no reader loads.
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string') {
      throw new ConfigError({ field: `metadata.${key}`, received: value, expected: 'a string (safetensors metadata holds strings only)', hint: `Pass e.g. { ${JSON.stringify(key)}: ${JSON.stringify(String(value))} }.` });
    }
  }
  for (const [name, entry] of entries) {
    const elements = entry.shape.reduce((a, b) => a * b, 1);
    if (elements * DTYPE_SIZES[entry.dtype] !== entry.data.byteLength) {
      throw new SafetensorsError('SIZE_MISMATCH', `shape [${entry.shape.join(', ')}] does not match ${entry.data.byteLength} bytes of ${entry.dtype}.`, {
        tensor: name,
      });
    }
  }
  entries.sort(([nameA, a], [nameB, b]) => DTYPE_ORDER[b.dtype] - DTYPE_ORDER[a.dtype] || (nameA < nameB ? -1 : nameA > nameB ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header['__metadata__'] = metadata;
  let offset = 0;
  for (const [name, entry] of entries) {
    const value = { dtype: entry.dtype, shape: entry.shape, data_offsets: [offset, offset + entry.data.byteLength] };
    Object.defineProperty(header, name, { value, enumerable: true, writable: true, configurable: true });
    offset += entry.data.byteLength;
  }
  let headerText = JSON.stringify(header);
  const encoder = new TextEncoder();
  let headerBytes = encoder.encode(headerText);
  const padding = (8 - (headerBytes.byteLength % 8)) % 8;
  if (padding > 0) {
    headerText += ' '.repeat(padding);
    headerBytes = encoder.encode(headerText);
  }
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let cursor = 8 + headerBytes.byteLength;
  for (const [, entry] of entries) {
    out.set(entry.data, cursor);
    cursor += entry.data.byteLength;
  }
  return out;
}

function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/**
 * Decode an entry to float32 values; F16 and BF16 are upcast exactly, integers converted.
 * @throws {SafetensorsError} `UNSUPPORTED_VALUE` when an I64 value does not fit a float exactly.
 */
export function entryToFloat32(entry: SafetensorsEntry, name?: string): Float32Array {
  const { data } = entry;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const count = data.byteLength / DTYPE_SIZES[entry.dtype];
  const out = new Float32Array(count);
  switch (entry.dtype) {
    case 'F32':
      // Fast path on little-endian hosts when the bytes are 4-aligned (entries from parseSafetensors are).
      if (LITTLE_ENDIAN && data.byteOffset % 4 === 0) out.set(new Float32Array(data.buffer, data.byteOffset, count));
      else for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
      break;
    case 'F16':
      for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(i * 2, true));
      break;
    case 'BF16': {
      const widened = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) widened[i] = view.getUint16(i * 2, true) << 16;
      break;
    }
    case 'I32':
      for (let i = 0; i < count; i++) out[i] = view.getInt32(i * 4, true);
      break;
    case 'U8':
      for (let i = 0; i < count; i++) out[i] = data[i]!;
      break;
    case 'I64':
      for (let i = 0; i < count; i++) {
        const value = view.getBigInt64(i * 8, true);
        if (value > 16777216n || value < -16777216n) {
          throw new SafetensorsError('UNSUPPORTED_VALUE', `I64 value ${value} cannot be represented exactly as float32.`, { tensor: name });
        }
        out[i] = Number(value);
      }
      break;
  }
  return out;
}

/**
 * Decode an integer entry (I64, I32, U8) to int32 values.
 * @throws {SafetensorsError} when the dtype is a float type or an I64 value overflows int32.
 */
export function entryToInt32(entry: SafetensorsEntry, name?: string): Int32Array {
  const view = new DataView(entry.data.buffer, entry.data.byteOffset, entry.data.byteLength);
  const count = entry.data.byteLength / DTYPE_SIZES[entry.dtype];
  const out = new Int32Array(count);
  if (entry.dtype === 'I32') for (let i = 0; i < count; i++) out[i] = view.getInt32(i * 4, true);
  else if (entry.dtype === 'U8') for (let i = 0; i < count; i++) out[i] = entry.data[i]!;
  else if (entry.dtype === 'I64') {
    for (let i = 0; i < count; i++) {
      const value = view.getBigInt64(i * 8, true);
      if (value > 2147483647n || value < -2147483648n) {
        throw new SafetensorsError('UNSUPPORTED_VALUE', `I64 value ${value} does not fit int32.`, { tensor: name });
      }
      out[i] = Number(value);
    }
  } else throw new SafetensorsError('UNSUPPORTED_VALUE', `expected an integer dtype, got ${entry.dtype}.`, { tensor: name });
  return out;
}

/** Little-endian F32 bytes of `values`. */
export function float32Entry(values: Float32Array, shape: readonly number[]): SafetensorsEntry {
  const data = new Uint8Array(values.length * 4);
  if (LITTLE_ENDIAN) data.set(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  else {
    const view = new DataView(data.buffer);
    for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i]!, true);
  }
  return { dtype: 'F32', shape: [...shape], data };
}

/** Read a safetensors entry into a new tensor (float32, or int32 for integer dtypes). The caller disposes it. */
export function entryToTensor(entry: SafetensorsEntry, name?: string): tf.Tensor {
  if (entry.dtype === 'F32' || entry.dtype === 'F16' || entry.dtype === 'BF16') {
    return tf.tensor(entryToFloat32(entry, name), [...entry.shape], 'float32');
  }
  return tf.tensor(entryToInt32(entry, name), [...entry.shape], 'int32');
}

/** Encode a tensor's values (float32 → F32, int32/bool → I32). Reads the tensor synchronously. */
export function tensorToEntry(tensor: tf.Tensor): SafetensorsEntry {
  checkStorable(tensor);
  return valuesToEntry(tensor.dataSync(), tensor);
}

/** {@link tensorToEntry}, reading the tensor asynchronously (a GPU backend does not stall). */
export async function tensorToEntryAsync(tensor: tf.Tensor): Promise<SafetensorsEntry> {
  checkStorable(tensor);
  return valuesToEntry(await tensor.data(), tensor);
}

function checkStorable(tensor: tf.Tensor): void {
  if (tensor.dtype !== 'float32' && tensor.dtype !== 'int32' && tensor.dtype !== 'bool') throw new SafetensorsError('UNSUPPORTED_VALUE', `cannot store a ${tensor.dtype} tensor.`);
}

function valuesToEntry(values: tf.TypedArray | string[], tensor: tf.Tensor): SafetensorsEntry {
  if (tensor.dtype === 'float32') return float32Entry(values as Float32Array, tensor.shape);
  const integers = values as Int32Array | Uint8Array;
  const data = new Uint8Array(integers.length * 4);
  const view = new DataView(data.buffer);
  for (let i = 0; i < integers.length; i++) view.setInt32(i * 4, integers[i]!, true);
  return { dtype: 'I32', shape: [...tensor.shape], data };
}
