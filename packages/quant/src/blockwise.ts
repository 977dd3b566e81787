import { ConfigError, LoraError } from '@lora/core';
import { DYNAMIC_MAP_SIGNED, dynamicCodeOf, fp4CodeOf, nf4CodeOf, type QuantType } from './codebooks.js';

/** Block sizes bitsandbytes accepts for 4-bit quantization. */
export const VALID_BLOCK_SIZES: readonly number[] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/** The result of {@link quantize4bit}: packed codes and one float32 absmax per block. */
export interface Quantized4bit {
  /** Two codes per byte, element 2k in the high nibble of byte k; `ceil(n/2)` bytes. */
  readonly packed: Uint8Array;
  /** max |w| of each block of `blockSize` consecutive elements (`ceil(n/blockSize)` values). */
  readonly absmax: Float32Array;
}

function nonFinite(name: string | undefined, index: number, value: number): LoraError {
  return new LoraError(
    `[@lora/quant] Cannot quantize${name ? ` "${name}"` : ''}: element ${index} is ${value}. 4-bit quantization needs finite weights; check the checkpoint or the merged adapter.`,
    { plugin: '@lora/quant' },
  );
}

// The numeric kernels take any positive block size (bitsandbytes' own set is VALID_BLOCK_SIZES, checked
// where a state is made); 0 or a fraction would loop forever or index past the absmax.
function checkBlockSize(blockSize: unknown, caller: string): void {
  if (typeof blockSize !== 'number' || !Number.isSafeInteger(blockSize) || blockSize <= 0) {
    throw new ConfigError({ plugin: '@lora/quant', field: 'blockSize', received: blockSize, expected: 'a positive integer', hint: `Pass e.g. ${caller}(…, { blockSize: 64 }).` });
  }
}

/**
 * Blockwise 4-bit quantization exactly as bitsandbytes' `quantize_4bit`: blocks of `blockSize`
 * consecutive elements of the flat (row-major) input, float32 absmax per block, values scaled by the
 * float32 reciprocal of the absmax, nearest code by the type's decision rule (ties to the lower code),
 * element 2k in the high nibble of byte k. A short last block has its own absmax; an odd length pads
 * the last low nibble with the code of 0. An all-zero block stores absmax 0 and the code of 0.
 *
 * @param values the weight, flattened row-major ([out, in] as PyTorch stores it).
 * @param options.name used in error messages.
 * @throws {ConfigError} when `type` is not `nf4`/`fp4` or `blockSize` is not a positive integer;
 * {LoraError} when a value is NaN or infinite.
 * @example
 * const { packed, absmax } = quantize4bit(new Float32Array([0.5, -1, 0.25, 0]), { type: 'nf4', blockSize: 64 });
 */
export function quantize4bit(
  values: Float32Array,
  options: { readonly type: QuantType; readonly blockSize: number; readonly name?: string },
): Quantized4bit {
  const { type, blockSize } = options;
  if (type !== 'nf4' && type !== 'fp4') {
    throw new ConfigError({ plugin: '@lora/quant', field: 'type', received: type, expected: "'nf4' or 'fp4'", hint: "Pass e.g. quantize4bit(values, { type: 'nf4', blockSize: 64 })." });
  }
  checkBlockSize(blockSize, 'quantize4bit');
  const n = values.length;
  const blocks = Math.ceil(n / blockSize);
  const absmax = new Float32Array(blocks);
  const packed = new Uint8Array(Math.ceil(n / 2));
  const codeOf = type === 'nf4' ? nf4CodeOf : fp4CodeOf;
  for (let block = 0; block < blocks; block++) {
    const start = block * blockSize;
    const end = Math.min(n, start + blockSize);
    let max = 0;
    for (let i = start; i < end; i++) {
      const value = values[i]!;
      if (!Number.isFinite(value)) throw nonFinite(options.name, i, value);
      const magnitude = Math.abs(value);
      if (magnitude > max) max = magnitude;
    }
    absmax[block] = max;
    // bitsandbytes multiplies by the float32 reciprocal; 0 for an all-zero block (CUDA would make NaN).
    const inverse = max === 0 ? 0 : Math.fround(1 / max);
    for (let i = start; i < end; i++) {
      const code = codeOf(Math.fround(values[i]! * inverse));
      if ((i & 1) === 0) packed[i >> 1] = code << 4;
      else packed[i >> 1]! |= code;
    }
  }
  if ((n & 1) === 1) packed[n >> 1]! |= codeOf(0);
  return { packed, absmax };
}

/**
 * Dequantize packed 4-bit codes: `out[i] = float32(code[nibble(i)] · absmax[⌊i / blockSize⌋])`.
 *
 * @param options.code the 16-entry table (the stored `quant_map`; for FP4 in bit-pattern order).
 * @param options.length number of elements (the packed array may hold one padding nibble more).
 * @param options.out optional destination of at least `length` floats.
 */
export function dequantize4bit(
  packed: Uint8Array,
  absmax: Float32Array,
  options: { readonly code: Float32Array; readonly blockSize: number; readonly length: number; readonly out?: Float32Array },
): Float32Array {
  const { code, blockSize, length } = options;
  checkBlockSize(blockSize, 'dequantize4bit');
  const out = options.out ?? new Float32Array(length);
  const blocks = Math.ceil(length / blockSize);
  const scaled = new Float32Array(16);
  for (let block = 0; block < blocks; block++) {
    const scale = absmax[block]!;
    // Products of two float32 values are exact in double, so storing rounds once, as float32 math does.
    for (let k = 0; k < 16; k++) scaled[k] = code[k]! * scale;
    const start = block * blockSize;
    const end = Math.min(length, start + blockSize);
    // A byte (two values, high nibble first) at a time: ~25% faster than a value at a time, which
    // loads each byte twice and picks its nibble by a branch.
    let i = start;
    if ((i & 1) === 1 && i < end) {
      // An odd block size: the block starts on a byte's low nibble.
      out[i] = scaled[packed[i >> 1]! & 0x0f]!;
      i += 1;
    }
    for (; i + 1 < end; i += 2) {
      const byte = packed[i >> 1]!;
      out[i] = scaled[byte >> 4]!;
      out[i + 1] = scaled[byte & 0x0f]!;
    }
    if (i < end) out[i] = scaled[packed[i >> 1]! >> 4]!;
  }
  return out;
}

/** The result of {@link quantizeBlockwise8bit}. */
export interface Quantized8bit {
  /** One code (index into the 256-entry map) per element. */
  readonly codes: Uint8Array;
  /** max |x| of each block. */
  readonly absmax: Float32Array;
}

/**
 * bitsandbytes' `quantize_blockwise` (8 bits, deterministic): per block of `blockSize` elements, the
 * float32 absmax, values scaled by its float32 reciprocal, and the nearest entry of `code` found by the
 * CUDA kernel's binary search ({@link dynamicCodeOf}).
 *
 * @param options.code a sorted 256-entry map (default: the signed dynamic map).
 * @param options.out optional destination for the codes.
 */
export function quantizeBlockwise8bit(
  values: Float32Array,
  options: { readonly blockSize: number; readonly code?: Float32Array; readonly out?: Uint8Array; readonly absmaxOut?: Float32Array },
): Quantized8bit {
  const { blockSize } = options;
  checkBlockSize(blockSize, 'quantizeBlockwise8bit');
  const code = options.code ?? DYNAMIC_MAP_SIGNED;
  const n = values.length;
  const blocks = Math.ceil(n / blockSize);
  const codes = options.out ?? new Uint8Array(n);
  const absmax = options.absmaxOut ?? new Float32Array(blocks);
  for (let block = 0; block < blocks; block++) {
    const start = block * blockSize;
    const end = Math.min(n, start + blockSize);
    let max = 0;
    for (let i = start; i < end; i++) {
      const magnitude = Math.abs(values[i]!);
      if (magnitude > max) max = magnitude;
    }
    absmax[block] = max;
    const inverse = max === 0 ? 0 : Math.fround(1 / max);
    for (let i = start; i < end; i++) codes[i] = dynamicCodeOf(code, Math.fround(values[i]! * inverse));
  }
  return { codes, absmax };
}

/**
 * Inverse of {@link quantizeBlockwise8bit}: `out[i] = float32(float32(code[codes[i]] · absmax[block]) + offset)`.
 * @param options.offset added after scaling (double quantization's mean); default 0.
 */
export function dequantizeBlockwise8bit(
  codes: Uint8Array,
  absmax: Float32Array,
  options: { readonly blockSize: number; readonly code?: Float32Array; readonly offset?: number; readonly out?: Float32Array },
): Float32Array {
  checkBlockSize(options.blockSize, 'dequantizeBlockwise8bit');
  const code = options.code ?? DYNAMIC_MAP_SIGNED;
  const offset = options.offset ?? 0;
  const out = options.out ?? new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) {
    out[i] = Math.fround(code[codes[i]!]! * absmax[Math.floor(i / options.blockSize)]!) + offset;
  }
  return out;
}
