import { ConfigError } from '@lora/core';
import { dequantize4bit, dequantizeBlockwise8bit, quantize4bit, quantizeBlockwise8bit } from './blockwise.js';
import { DYNAMIC_MAP_SIGNED, codebookFor, type QuantType } from './codebooks.js';
import { parseQuantOptions } from './quant-config.js';

/** Second-level (double) quantization of the absmax values. */
export interface NestedQuantState {
  /** 8-bit codes of `absmax − offset`, one per first-level block. */
  readonly codes: Uint8Array;
  /** float32 absmax of each block of `blockSize` centred absmax values. */
  readonly absmax: Float32Array;
  /** The 256-entry signed dynamic map (`nested_quant_map`). */
  readonly quantMap: Float32Array;
  /** Default 256 (bitsandbytes' matmul requires 256). */
  readonly blockSize: number;
  /** The mean of the absmax values, added back after dequantizing (`nested_offset`). */
  readonly offset: number;
}

/**
 * A 4-bit weight: packed codes in a `Uint8Array` plus what dequantizing needs, mirroring
 * bitsandbytes' `QuantState`. Treat it as immutable; tables may be shared between layers.
 */
export interface QuantState {
  /** 4-bit data type, `nf4` or `fp4` (bitsandbytes' `quant_type`; also the suffix of the `quant_state.bitsandbytes__<type>` key). */
  readonly quantType: QuantType;
  /** First-level block size (default 64). */
  readonly blockSize: number;
  /** The logical weight shape [out, in]. */
  readonly shape: readonly [number, number];
  /** The weight's dtype when it was quantized (`quant_state.dtype`), e.g. `float32` or `bfloat16`. */
  readonly dtype: string;
  /** The 16-entry code table (`quant_map`). */
  readonly quantMap: Float32Array;
  /** `ceil(out·in / 2)` bytes, element 2k in the high nibble of byte k. */
  readonly packed: Uint8Array;
  /** float32 absmax per block, or null when double-quantized (see `nested`). */
  readonly absmax: Float32Array | null;
  /** Double quantization of the absmax, or null. */
  readonly nested: NestedQuantState | null;
}

/** Options for {@link quantizeWeight}. */
export interface QuantizeWeightOptions {
  /** Default `nf4`. */
  readonly type?: QuantType;
  /** Default 64. */
  readonly blockSize?: number;
  /** Quantize the absmax values again to 8 bits (default true). */
  readonly doubleQuant?: boolean;
  /** Double-quantization block size (default 256). */
  readonly nestedBlockSize?: number;
  /** Use this offset instead of the float32 mean of the absmax (e.g. a stored `nested_offset`). */
  readonly nestedOffset?: number;
  /** Recorded as `quant_state.dtype` (default `float32`). */
  readonly dtype?: string;
  /** Used in error messages. */
  readonly name?: string;
}

/**
 * Double quantization of first-level absmax values (bitsandbytes `compress_statistics`): subtract
 * their mean (a float32, the float64 mean rounded) and quantize the result to 8 bits in blocks of
 * `blockSize` with the signed dynamic map.
 */
export function doubleQuantizeAbsmax(
  absmax: Float32Array,
  options: { readonly blockSize?: number; readonly offset?: number } = {},
): NestedQuantState {
  const blockSize = options.blockSize ?? 256;
  let offset = options.offset;
  if (offset === undefined) {
    let sum = 0;
    for (const value of absmax) sum += value;
    offset = Math.fround(absmax.length === 0 ? 0 : sum / absmax.length);
  }
  offset = Math.fround(offset);
  const centered = new Float32Array(absmax.length);
  for (let i = 0; i < absmax.length; i++) centered[i] = absmax[i]! - offset;
  const { codes, absmax: nestedAbsmax } = quantizeBlockwise8bit(centered, { blockSize, code: DYNAMIC_MAP_SIGNED });
  return { codes, absmax: nestedAbsmax, quantMap: DYNAMIC_MAP_SIGNED, blockSize, offset };
}

/** The first-level absmax of a state (dequantized from the nested state when double-quantized). */
export function absmaxOf(state: QuantState): Float32Array {
  if (state.absmax) return state.absmax;
  const nested = state.nested!;
  return dequantizeBlockwise8bit(nested.codes, nested.absmax, { blockSize: nested.blockSize, code: nested.quantMap, offset: nested.offset });
}

function checkShape(values: Float32Array, shape: readonly [number, number], name: string | undefined): void {
  const valid = Array.isArray(shape) && shape.length === 2 && shape.every((size) => Number.isSafeInteger(size) && size > 0);
  if (!valid || shape[0] * shape[1] !== values.length) {
    throw new ConfigError({
      plugin: '@lora/quant',
      field: 'shape',
      received: shape,
      expected: `[out, in] (positive integers) with out · in = ${values.length}, the number of values${name ? ` of "${name}"` : ''}`,
      hint: 'Pass the weight\'s own [out, in] shape.',
    });
  }
}

/**
 * Quantize a dense float32 weight [out, in] (row-major values) to a {@link QuantState}.
 * @throws {ConfigError} on an invalid `type`, `blockSize` (bitsandbytes' 32…4096, powers of two),
 * `doubleQuant` or `nestedBlockSize`, or a `shape` whose product is not the number of values;
 * {LoraError} on a non-finite value.
 * @example
 * const state = quantizeWeight(weightValues, [768, 768], { type: 'nf4', doubleQuant: true });
 */
export function quantizeWeight(values: Float32Array, shape: readonly [number, number], options: QuantizeWeightOptions = {}): QuantState {
  // The same checks (and one-line errors) as quant(): a state made here is one bitsandbytes can load.
  const { type, blockSize, doubleQuant } = parseQuantOptions({ type: options.type, blockSize: options.blockSize, doubleQuant: options.doubleQuant });
  const nestedBlockSize = options.nestedBlockSize;
  if (nestedBlockSize !== undefined && (!Number.isSafeInteger(nestedBlockSize) || nestedBlockSize <= 0)) {
    throw new ConfigError({ plugin: '@lora/quant', field: 'nestedBlockSize', received: nestedBlockSize, expected: 'a positive integer', hint: 'Pass e.g. { nestedBlockSize: 256 } (bitsandbytes\' value), or leave it out.' });
  }
  checkShape(values, shape, options.name);
  const { packed, absmax } = quantize4bit(values, { type, blockSize, name: options.name });
  return {
    quantType: type,
    blockSize,
    shape: [shape[0], shape[1]],
    dtype: options.dtype ?? 'float32',
    quantMap: codebookFor(type),
    packed,
    absmax: doubleQuant ? null : absmax,
    nested: doubleQuant ? doubleQuantizeAbsmax(absmax, { blockSize: nestedBlockSize, offset: options.nestedOffset }) : null,
  };
}

/** Dequantize a state to dense float32 values [out, in], row-major. */
export function dequantizeWeight(state: QuantState, out?: Float32Array): Float32Array {
  return dequantize4bit(state.packed, absmaxOf(state), {
    code: state.quantMap,
    blockSize: state.blockSize,
    length: state.shape[0] * state.shape[1],
    out,
  });
}

/** Bytes a state holds, split by part. Shared tables are reported in `tables` (count them once per model). */
export interface QuantStateBytes {
  /** The packed codes. */
  readonly packed: number;
  /** absmax (float32 or 8-bit codes) plus nested absmax. */
  readonly statistics: number;
  /** The 16-entry quant map and the 256-entry nested map. */
  readonly tables: number;
}

/** Count the bytes of the buffers a state holds. */
export function quantStateBytes(state: QuantState): QuantStateBytes {
  const statistics = state.nested ? state.nested.codes.byteLength + state.nested.absmax.byteLength : state.absmax!.byteLength;
  const tables = state.quantMap.byteLength + (state.nested ? state.nested.quantMap.byteLength : 0);
  return { packed: state.packed.byteLength, statistics, tables };
}
