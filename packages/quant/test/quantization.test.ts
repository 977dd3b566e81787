import { ConfigError, LoraError } from '@lora/core';
import { describe, expect, it } from 'vitest';
import {
  DYNAMIC_MAP_SIGNED,
  DYNAMIC_MAP_UNSIGNED,
  FP4_CODE,
  NF4_CODE,
  absmaxOf,
  dequantize4bit,
  dequantizeBlockwise8bit,
  dequantizeWeight,
  dynamicCodeOf,
  fp4CodeOf,
  maxHalfGap,
  nf4CodeOf,
  quantStateBytes,
  quantStateToEntries,
  quantize4bit,
  quantizeBlockwise8bit,
  quantizeWeight,
  type QuantType,
} from '../src/index.js';
import { normalSamples } from './helpers.js';

function errorStats(type: QuantType, values: Float32Array, blockSize = 64): { rmse: number; relativeRmse: number; worstBoundRatio: number } {
  const state = quantizeWeight(values, [values.length / 64, 64], { type, blockSize, doubleQuant: false });
  const restored = dequantizeWeight(state);
  const absmax = absmaxOf(state);
  const halfGap = maxHalfGap(type);
  let squared = 0;
  let energy = 0;
  let worstBoundRatio = 0;
  for (let i = 0; i < values.length; i++) {
    const error = Math.abs(restored[i]! - values[i]!);
    squared += error * error;
    energy += values[i]! * values[i]!;
    worstBoundRatio = Math.max(worstBoundRatio, error / (halfGap * absmax[Math.floor(i / blockSize)]!));
  }
  return { rmse: Math.sqrt(squared / values.length), relativeRmse: Math.sqrt(squared / energy), worstBoundRatio };
}

describe('codebooks', () => {
  it('holds exactly the NF4 values of the issue, code 0 → 15', () => {
    expect([...NF4_CODE]).toEqual([
      -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
      -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
      0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ]);
  });

  it('holds bitsandbytes FP4: sign in bit 3, magnitudes 0, 1/192, 2/3, 1, 1/3, 1/2, 1/6, 1/4 by bit pattern', () => {
    const magnitudes = [0, 1 / 192, 2 / 3, 1, 1 / 3, 1 / 2, 1 / 6, 1 / 4].map(Math.fround);
    for (let bits = 0; bits < 8; bits++) {
      expect(FP4_CODE[bits]).toBe(magnitudes[bits]);
      expect(FP4_CODE[bits | 8]).toBe(-magnitudes[bits]!);
    }
    expect(Object.is(FP4_CODE[8], -0)).toBe(true);
  });

  it('sends a value exactly on an NF4 midpoint to the lower code', () => {
    for (let k = 0; k < 15; k++) {
      const midpoint = Math.fround((NF4_CODE[k]! + NF4_CODE[k + 1]!) / 2);
      expect(nf4CodeOf(midpoint)).toBe(k);
      // One float32 step above goes up.
      const above = new Float32Array([midpoint]);
      new Int32Array(above.buffer)[0]! += midpoint >= 0 ? 1 : -1;
      expect(nf4CodeOf(above[0]!)).toBe(k + 1);
    }
  });

  it('picks the nearest code (NF4 and FP4) for values in [-1, 1]', () => {
    for (let i = 0; i <= 2000; i++) {
      const x = Math.fround(-1 + i / 1000);
      for (const [codeOf, table] of [[nf4CodeOf, NF4_CODE], [fp4CodeOf, FP4_CODE]] as const) {
        const chosen = Math.abs(table[codeOf(x)]! - x);
        const best = Math.min(...[...table].map((value) => Math.abs(value - x)));
        expect(chosen).toBeCloseTo(best, 6);
      }
    }
  });

  it('finds the nearest entry of the 8-bit dynamic maps by binary search', () => {
    for (const map of [DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED]) {
      expect(map.length).toBe(256);
      for (let i = 1; i < 256; i++) expect(map[i]!).toBeGreaterThan(map[i - 1]!);
      const low = map === DYNAMIC_MAP_SIGNED ? -1 : 0;
      for (let i = 0; i <= 3000; i++) {
        const x = Math.fround(low + ((1 - low) * i) / 3000);
        const chosen = Math.abs(map[dynamicCodeOf(map, x)]! - x);
        const best = Math.min(...[...map].map((value) => Math.abs(value - x)));
        expect(chosen).toBeLessThanOrEqual(best + 1e-7);
      }
    }
    expect(DYNAMIC_MAP_SIGNED[0]).toBe(Math.fround(-0.99296874));
    expect(DYNAMIC_MAP_SIGNED[127]).toBe(0);
    expect(DYNAMIC_MAP_UNSIGNED[0]).toBe(0);
    expect(DYNAMIC_MAP_UNSIGNED[255]).toBe(1);
  });
});

describe('quantize4bit', () => {
  // The bound implied by the codebook spacing: a value in [-absmax, absmax] is at most half the widest
  // gap between neighbouring codes (times absmax) from its code. NF4's widest gap is -1 → -0.696
  // (0.3038), so |error| <= 0.1519·absmax; FP4's is 2/3 → 1 (0.3333), so <= 0.1667·absmax.
  it('keeps every NF4 round-trip error on N(0,1) data within 0.1519·absmax of its block', () => {
    expect(maxHalfGap('nf4')).toBeCloseTo(0.15190360, 7);
    const values = normalSamples(64 * 4096, 11);
    const stats = errorStats('nf4', values);
    expect(stats.worstBoundRatio).toBeLessThanOrEqual(1 + 1e-6);
    // Relative RMSE on Gaussian data at block size 64 (QLoRA spec: ≈ 0.092).
    expect(stats.relativeRmse).toBeGreaterThan(0.085);
    expect(stats.relativeRmse).toBeLessThan(0.1);
  });

  it('is more accurate with NF4 than with FP4 on normal data', () => {
    const values = normalSamples(64 * 4096, 12);
    const nf4 = errorStats('nf4', values);
    const fp4 = errorStats('fp4', values);
    expect(fp4.worstBoundRatio).toBeLessThanOrEqual(1 + 1e-6);
    expect(nf4.rmse).toBeLessThan(fp4.rmse * 0.85);
    console.log(`relative RMSE on N(0,1), block 64: NF4 ${nf4.relativeRmse.toFixed(4)}, FP4 ${fp4.relativeRmse.toFixed(4)}`);
  });

  it('handles a short last block and an odd length as bitsandbytes does', () => {
    const values = normalSamples(121, 3); // 121 = 64 + 57, odd
    const { packed, absmax } = quantize4bit(values, { type: 'nf4', blockSize: 64 });
    expect(packed.length).toBe(61);
    expect(absmax.length).toBe(2);
    let tail = 0;
    for (let i = 64; i < 121; i++) tail = Math.max(tail, Math.abs(values[i]!));
    expect(absmax[1]).toBe(Math.fround(tail));
    expect(packed[60]! & 0x0f).toBe(7); // padding nibble = the NF4 code of 0
    const fp4 = quantize4bit(values, { type: 'fp4', blockSize: 64 });
    expect(fp4.packed[60]! & 0x0f).toBe(0); // FP4 code of 0
    const restored = dequantize4bit(packed, absmax, { code: NF4_CODE, blockSize: 64, length: 121 });
    expect(restored.length).toBe(121);
    for (let i = 0; i < 121; i++) expect(Math.abs(restored[i]! - values[i]!)).toBeLessThanOrEqual(0.152 * absmax[i >> 6]!);
  });

  it('dequantizes element i to float32(code[nibble i] · absmax[⌊i / blockSize⌋]) at any block size and length', () => {
    // Odd block sizes start every other block on a byte's low nibble; odd lengths end on a high one.
    for (const [blockSize, length] of [
      [64, 121],
      [64, 128],
      [5, 37],
      [7, 42],
      [1, 9],
    ] as const) {
      const values = normalSamples(length, blockSize + length);
      const { packed, absmax } = quantize4bit(values, { type: 'nf4', blockSize });
      const expected = Array.from({ length }, (_, i) => Math.fround(NF4_CODE[(i & 1) === 0 ? packed[i >> 1]! >> 4 : packed[i >> 1]! & 0x0f]! * absmax[Math.floor(i / blockSize)]!));
      expect(Array.from(dequantize4bit(packed, absmax, { code: NF4_CODE, blockSize, length }))).toEqual(expected);
    }
  });

  it('stores an all-zero block as absmax 0 and code 0x77 (NF4), dequantizing to zeros', () => {
    const values = new Float32Array(128);
    values.set(normalSamples(64, 5), 64);
    const { packed, absmax } = quantize4bit(values, { type: 'nf4', blockSize: 64 });
    expect(absmax[0]).toBe(0);
    expect([...packed.slice(0, 32)].every((byte) => byte === 0x77)).toBe(true);
    const restored = dequantize4bit(packed, absmax, { code: NF4_CODE, blockSize: 64, length: 128 });
    expect([...restored.slice(0, 64)].every((value) => value === 0)).toBe(true);
  });

  it('rejects NaN and infinite weights with a LoraError naming the weight', () => {
    const values = normalSamples(64, 1);
    values[10] = Number.NaN;
    expect(() => quantize4bit(values, { type: 'nf4', blockSize: 64, name: 'h.0.mlp.c_fc' })).toThrow(LoraError);
    expect(() => quantize4bit(values, { type: 'nf4', blockSize: 64, name: 'h.0.mlp.c_fc' })).toThrow(/h\.0\.mlp\.c_fc.*element 10/u);
  });
});

describe('double quantization', () => {
  it('reconstructs the absmax to within the 8-bit dynamic-map step', () => {
    const absmax = Float32Array.from(normalSamples(1000, 8), (x) => 1 + Math.abs(x));
    const { codes, absmax: nested } = quantizeBlockwise8bit(absmax.map((x) => x - 2), { blockSize: 256 });
    const restored = dequantizeBlockwise8bit(codes, nested, { blockSize: 256, offset: 2 });
    for (let i = 0; i < absmax.length; i++) expect(Math.abs(restored[i]! - absmax[i]!)).toBeLessThan(0.02 * nested[i >> 8]!);
  });

  it('stores ≤ 13% of the float32 bytes, measured from the actual buffers (4.127 bits/parameter)', () => {
    for (const [out, inFeatures] of [
      [1024, 1024],
      [768, 3072],
    ] as const) {
      const state = quantizeWeight(normalSamples(out * inFeatures, 21, 0.02), [out, inFeatures], { type: 'nf4', doubleQuant: true });
      const bytes = quantStateBytes(state);
      const inMemory = bytes.packed + bytes.statistics + bytes.tables;
      const onDisk = [...quantStateToEntries(state).values()].reduce((sum, entry) => sum + entry.data.byteLength, 0);
      const float32 = out * inFeatures * 4;
      expect(inMemory / float32).toBeLessThanOrEqual(0.13);
      expect(onDisk / float32).toBeLessThanOrEqual(0.13);
      // 4 + 8/64 + 32/(64·256) bits per parameter for the statistics-bearing buffers.
      expect(((bytes.packed + bytes.statistics) * 8) / (out * inFeatures)).toBeCloseTo(4 + 8 / 64 + 32 / (64 * 256), 3);
      console.log(`[${out}, ${inFeatures}] NF4+DQ: ${inMemory} B in memory = ${((100 * inMemory) / float32).toFixed(3)}% of float32; on disk ${((100 * onDisk) / float32).toFixed(3)}%`);
    }
  });
});

describe('quantizeWeight', () => {
  function fieldOf(fn: () => unknown): { field: string; message: string } {
    try {
      fn();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).not.toContain('\n');
      return { field: (error as ConfigError).field, message: (error as Error).message };
    }
    throw new Error('expected a ConfigError');
  }
  const values = normalSamples(96, 4);

  it("refuses a type, block size or double-quantization flag quant() refuses, with quant()'s ConfigError", () => {
    expect(fieldOf(() => quantizeWeight(values, [8, 12], { type: 'int4' as QuantType }))).toEqual({
      field: 'type',
      message: `[@lora/quant] Invalid config: type must be 'nf4' or 'fp4', got "int4". Pass e.g. { type: 'nf4' }.`,
    });
    for (const blockSize of [48, 0, 2.5, 8192]) expect(fieldOf(() => quantizeWeight(values, [8, 12], { blockSize })).field).toBe('blockSize');
    expect(fieldOf(() => quantizeWeight(values, [8, 12], { doubleQuant: 'yes' as unknown as boolean })).field).toBe('doubleQuant');
    expect(fieldOf(() => quantizeWeight(values, [8, 12], { nestedBlockSize: 0 })).field).toBe('nestedBlockSize');
  });

  it('refuses a shape whose product is not the number of values', () => {
    for (const shape of [[10, 12], [4, 12], [96, 0], [-8, -12]] as [number, number][]) {
      const { field, message } = fieldOf(() => quantizeWeight(values, shape, { name: 'h.0.fc' }));
      expect(field).toBe('shape');
      expect(message).toContain('out · in = 96, the number of values of "h.0.fc"');
    }
    expect(quantizeWeight(values, [8, 12]).shape).toEqual([8, 12]);
  });
});

describe('quantize4bit / dequantize4bit / quantizeBlockwise8bit / dequantizeBlockwise8bit', () => {
  it('refuses a block size that is not a positive integer and an unknown type with a ConfigError (was a RangeError or an endless loop)', () => {
    const values = normalSamples(64, 2);
    for (const blockSize of [0, -64, 2.5, Number.NaN]) {
      expect(() => quantize4bit(values, { type: 'nf4', blockSize })).toThrow(ConfigError);
      expect(() => dequantize4bit(new Uint8Array(32), new Float32Array(1), { code: NF4_CODE, blockSize, length: 64 })).toThrow(/dequantize4bit\(…, \{ blockSize: 64 \}\)/u);
      expect(() => quantizeBlockwise8bit(values, { blockSize })).toThrow(ConfigError);
      expect(() => dequantizeBlockwise8bit(new Uint8Array(64), new Float32Array(1), { blockSize })).toThrow(ConfigError);
    }
    expect(() => quantize4bit(values, { type: 'int4' as QuantType, blockSize: 64 })).toThrow(/type must be 'nf4' or 'fp4', got "int4"/u);
  });
});
