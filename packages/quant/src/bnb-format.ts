import { float32Entry, type SafetensorsEntry } from '@lora/core';
import { VALID_BLOCK_SIZES } from './blockwise.js';
import { DYNAMIC_MAP_SIGNED, codebookFor, type QuantType } from './codebooks.js';
import { QuantStateError } from './errors.js';
import { pythonFloatRepr } from './python-json.js';
import type { NestedQuantState, QuantState } from './quant-state.js';

const QUANT_STATE_INFIX = '.quant_state.';
const STATE_KEYS = new Set([
  'absmax',
  'quant_map',
  'nested_absmax',
  'nested_quant_map',
  'quant_state',
  'quant_type',
  'blocksize',
  'dtype',
  'shape',
  'nested_blocksize',
  'nested_dtype',
  'nested_offset',
]);
const KNOWN_DTYPES = new Set(['float32', 'float16', 'bfloat16', 'float64']);

function weightKey(modulePath: string): string {
  return modulePath === '' ? 'weight' : `${modulePath}.weight`;
}

/**
 * The JSON blob bitsandbytes stores as `weight.quant_state.bitsandbytes__<type>`: Python's
 * `json.dumps` of `{quant_type, blocksize, dtype, shape[, nested_blocksize, nested_dtype, nested_offset]}`
 * with its default separators, byte for byte.
 */
export function quantStateBlob(state: QuantState): string {
  let text = `{"quant_type": "${state.quantType}", "blocksize": ${state.blockSize}, "dtype": "${state.dtype}", "shape": [${state.shape[0]}, ${state.shape[1]}]`;
  if (state.nested) {
    text += `, "nested_blocksize": ${state.nested.blockSize}, "nested_dtype": "float32", "nested_offset": ${pythonFloatRepr(state.nested.offset)}`;
  }
  return `${text}}`;
}

/**
 * The tensors `Linear4bit._save_to_state_dict` writes for one layer's weight, keyed under
 * `modulePath` (`''` for none): `weight` (U8 [ceil(n/2), 1]), `weight.absmax` (F32, or U8 with double
 * quantization), `weight.quant_map`, `weight.nested_absmax`, `weight.nested_quant_map` and
 * `weight.quant_state.bitsandbytes__<type>` (U8 JSON bytes). The bias is not included.
 */
export function quantStateToEntries(state: QuantState, modulePath = ''): Map<string, SafetensorsEntry> {
  const key = weightKey(modulePath);
  const entries = new Map<string, SafetensorsEntry>();
  entries.set(key, { dtype: 'U8', shape: [state.packed.length, 1], data: state.packed });
  if (state.nested) {
    entries.set(`${key}.absmax`, { dtype: 'U8', shape: [state.nested.codes.length], data: state.nested.codes });
  } else {
    entries.set(`${key}.absmax`, float32Entry(state.absmax!, [state.absmax!.length]));
  }
  entries.set(`${key}.quant_map`, float32Entry(state.quantMap, [state.quantMap.length]));
  if (state.nested) {
    entries.set(`${key}.nested_absmax`, float32Entry(state.nested.absmax, [state.nested.absmax.length]));
    entries.set(`${key}.nested_quant_map`, float32Entry(state.nested.quantMap, [state.nested.quantMap.length]));
  }
  const blob = new TextEncoder().encode(quantStateBlob(state));
  entries.set(`${key}.quant_state.bitsandbytes__${state.quantType}`, { dtype: 'U8', shape: [blob.length], data: blob });
  return entries;
}

/**
 * Module paths of the 4-bit layers in a checkpoint: those with a `<path>.weight.quant_state.*` key
 * (`''` for a bare `weight.quant_state.*`). Malformed keys are reported when the state is read.
 */
export function findQuantizedModules(keys: Iterable<string>): string[] {
  const paths = new Set<string>();
  for (const key of keys) {
    if (key.startsWith(`weight${QUANT_STATE_INFIX}`)) {
      paths.add('');
      continue;
    }
    const at = key.indexOf(`.weight${QUANT_STATE_INFIX}`);
    if (at > 0) paths.add(key.slice(0, at));
  }
  return [...paths];
}

function float32Values(entry: SafetensorsEntry, name: string, expectedLength: number, what: string): Float32Array {
  if (entry.dtype !== 'F32') throw new QuantStateError(name, `${what} must be F32, got ${entry.dtype}.`);
  const length = entry.data.byteLength / 4;
  if (length !== expectedLength) {
    throw new QuantStateError(name, `${what} has ${length} values, expected ${expectedLength}.`, {
      hint: 'The checkpoint does not match its quant_state JSON (shape/blocksize); re-export it.',
    });
  }
  const view = new DataView(entry.data.buffer, entry.data.byteOffset, entry.data.byteLength);
  const values = new Float32Array(length);
  for (let i = 0; i < length; i++) {
    const value = view.getFloat32(i * 4, true);
    if (!Number.isFinite(value)) throw new QuantStateError(name, `${what} holds ${value} at index ${i}.`);
    values[i] = value;
  }
  return values;
}

function sameValues(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) return false;
  return true;
}

function required(tensors: ReadonlyMap<string, SafetensorsEntry>, name: string, blobKey: string, why: string): SafetensorsEntry {
  const entry = tensors.get(name);
  if (!entry) throw new QuantStateError(name, `the tensor is missing (${why}; the state is described by "${blobKey}").`);
  return entry;
}

function isPositiveInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}

/**
 * Read one layer's bitsandbytes 4-bit state from checkpoint tensors (the reverse of
 * {@link quantStateToEntries}). Every tensor and JSON field is validated; the stored `quant_map` and
 * `nested_quant_map` are used as stored (shared with the built-in tables when bit-identical).
 *
 * @throws {QuantStateError} naming the tensor: a missing tensor, wrong dtype or length (e.g. an absmax
 * that does not have one value per block), an unknown quant type, or a JSON blob that is not valid JSON
 * or lacks/mistypes a field.
 */
export function quantStateFromEntries(tensors: ReadonlyMap<string, SafetensorsEntry>, modulePath = ''): QuantState {
  const key = weightKey(modulePath);
  const stateKeys = [...tensors.keys()].filter((name) => name.startsWith(`${key}${QUANT_STATE_INFIX}`));
  if (stateKeys.length === 0) {
    throw new QuantStateError(`${key}.quant_state.bitsandbytes__nf4`, 'the tensor is missing: this weight has no 4-bit quantization state.');
  }
  if (stateKeys.length > 1) {
    throw new QuantStateError(stateKeys[1]!, `more than one quantization state for "${key}" (${stateKeys.join(', ')}).`);
  }
  const blobKey = stateKeys[0]!;
  const suffix = blobKey.slice(key.length + QUANT_STATE_INFIX.length);
  const typeMatch = /^bitsandbytes__(nf4|fp4)$/u.exec(suffix);
  if (!typeMatch) {
    throw new QuantStateError(blobKey, `unknown quant type "${suffix}"; expected bitsandbytes__nf4 or bitsandbytes__fp4.`, {
      hint: 'Only bitsandbytes 4-bit NF4/FP4 checkpoints can be loaded.',
    });
  }
  const keyType = typeMatch[1] as QuantType;
  const blobEntry = tensors.get(blobKey)!;
  if (blobEntry.dtype !== 'U8') throw new QuantStateError(blobKey, `the JSON blob must be U8 bytes, got ${blobEntry.dtype}.`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(blobEntry.data));
  } catch (error) {
    throw new QuantStateError(blobKey, 'the JSON blob is not valid UTF-8 JSON.', { cause: error });
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new QuantStateError(blobKey, 'the JSON blob must be an object.');
  }
  const blob = parsed as Record<string, unknown>;
  for (const field of Object.keys(blob)) {
    if (!STATE_KEYS.has(field)) throw new QuantStateError(blobKey, `the JSON blob has an unknown field "${field}".`);
  }
  if (blob['quant_type'] !== keyType) {
    throw new QuantStateError(blobKey, `quant_type is ${JSON.stringify(blob['quant_type'])} but the key says ${keyType}.`);
  }
  const blockSize = blob['blocksize'];
  if (typeof blockSize !== 'number' || !VALID_BLOCK_SIZES.includes(blockSize)) {
    throw new QuantStateError(blobKey, `blocksize must be one of ${VALID_BLOCK_SIZES.join(', ')}, got ${JSON.stringify(blockSize)}.`);
  }
  const shape = blob['shape'];
  if (!Array.isArray(shape) || shape.length !== 2 || !shape.every(isPositiveInteger)) {
    throw new QuantStateError(blobKey, `shape must be [out, in] with positive integers, got ${JSON.stringify(shape)}.`);
  }
  const dtype = blob['dtype'];
  if (typeof dtype !== 'string' || !KNOWN_DTYPES.has(dtype)) {
    throw new QuantStateError(blobKey, `dtype must be one of ${[...KNOWN_DTYPES].join(', ')}, got ${JSON.stringify(dtype)}.`);
  }
  const nestedFields = ['nested_blocksize', 'nested_dtype', 'nested_offset'].filter((field) => field in blob);
  const hasNestedTensor = tensors.has(`${key}.nested_absmax`);
  if (nestedFields.length !== 0 && nestedFields.length !== 3) {
    throw new QuantStateError(blobKey, `the JSON blob has ${nestedFields.join(', ')} but double quantization needs nested_blocksize, nested_dtype and nested_offset.`);
  }
  const nestedOn = nestedFields.length === 3;
  if (nestedOn !== hasNestedTensor) {
    throw new QuantStateError(
      nestedOn ? `${key}.nested_absmax` : blobKey,
      nestedOn ? 'the tensor is missing although the JSON blob describes double quantization.' : 'nested_absmax is present but the JSON blob has no nested_* fields.',
    );
  }

  const [outFeatures, inFeatures] = shape as [number, number];
  const elements = outFeatures * inFeatures;
  const blocks = Math.ceil(elements / blockSize);
  const packedBytes = Math.ceil(elements / 2);
  const weightEntry = required(tensors, key, blobKey, 'the packed 4-bit codes');
  // quant_storage other than uint8 stores the same bytes viewed as another dtype: read the raw bytes.
  if (weightEntry.data.byteLength < packedBytes) {
    throw new QuantStateError(key, `the packed weight has ${weightEntry.data.byteLength} bytes, but shape [${outFeatures}, ${inFeatures}] needs ${packedBytes}.`);
  }
  const packed = weightEntry.data.slice(0, packedBytes);

  const quantMapKey = `${key}.quant_map`;
  const storedMap = float32Values(required(tensors, quantMapKey, blobKey, 'the 16-entry code table'), quantMapKey, 16, 'quant_map');
  const builtin = codebookFor(keyType);
  const quantMap = sameValues(storedMap, builtin) ? builtin : storedMap;

  const absmaxKey = `${key}.absmax`;
  const absmaxEntry = required(tensors, absmaxKey, blobKey, 'the per-block absmax');
  let absmax: Float32Array | null = null;
  let nested: NestedQuantState | null = null;
  if (nestedOn) {
    if (absmaxEntry.dtype !== 'U8') {
      throw new QuantStateError(absmaxKey, `with double quantization absmax must be U8 codes, got ${absmaxEntry.dtype}.`);
    }
    if (absmaxEntry.data.byteLength !== blocks) {
      throw new QuantStateError(absmaxKey, `absmax has ${absmaxEntry.data.byteLength} values, expected ${blocks} (one per block of ${blockSize} of ${elements} elements).`);
    }
    const nestedBlockSize = blob['nested_blocksize'];
    if (!isPositiveInteger(nestedBlockSize)) {
      throw new QuantStateError(blobKey, `nested_blocksize must be a positive integer, got ${JSON.stringify(nestedBlockSize)}.`);
    }
    if (blob['nested_dtype'] !== 'float32') {
      throw new QuantStateError(blobKey, `nested_dtype must be "float32", got ${JSON.stringify(blob['nested_dtype'])}.`);
    }
    const offset = blob['nested_offset'];
    if (typeof offset !== 'number' || !Number.isFinite(offset)) {
      throw new QuantStateError(blobKey, `nested_offset must be a finite number, got ${JSON.stringify(offset)}.`);
    }
    const nestedAbsmaxKey = `${key}.nested_absmax`;
    const nestedMapKey = `${key}.nested_quant_map`;
    const nestedAbsmax = float32Values(tensors.get(nestedAbsmaxKey)!, nestedAbsmaxKey, Math.ceil(blocks / nestedBlockSize), 'nested_absmax');
    const storedNestedMap = float32Values(required(tensors, nestedMapKey, blobKey, 'the 256-entry dynamic map'), nestedMapKey, 256, 'nested_quant_map');
    nested = {
      codes: absmaxEntry.data.slice(),
      absmax: nestedAbsmax,
      quantMap: sameValues(storedNestedMap, DYNAMIC_MAP_SIGNED) ? DYNAMIC_MAP_SIGNED : storedNestedMap,
      blockSize: nestedBlockSize,
      offset: Math.fround(offset),
    };
  } else {
    absmax = float32Values(absmaxEntry, absmaxKey, blocks, 'absmax');
  }
  return { quantType: keyType, blockSize, shape: [outFeatures, inFeatures], dtype, quantMap, packed, absmax, nested };
}
