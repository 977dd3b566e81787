import { entryToFloat32, readSafetensorsFile, serializeSafetensors, type SafetensorsFile } from '@lora/core';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  DYNAMIC_MAP_SIGNED,
  NF4_CODE,
  NF4_THRESHOLDS,
  absmaxOf,
  dequantizeWeight,
  quantStateBlob,
  quantStateFromEntries,
  quantStateToEntries,
  quantize4bit,
  quantizeWeight,
} from '../src/index.js';
import { NF4_FIXTURE_DIR } from './helpers.js';

let reference: SafetensorsFile;
let bnbStateDict: SafetensorsFile;
const f32 = (name: string): Float32Array => entryToFloat32(reference.tensors.get(name)!);
const u8 = (name: string): Uint8Array => reference.tensors.get(name)!.data;

function expectBitIdentical(actual: Float32Array, expected: Float32Array): void {
  expect(actual.length).toBe(expected.length);
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const e = new Uint32Array(expected.buffer.slice(expected.byteOffset, expected.byteOffset + expected.byteLength));
  let differing = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== e[i]) differing++;
  expect(differing).toBe(0);
}

beforeAll(async () => {
  reference = await readSafetensorsFile(path.join(NF4_FIXTURE_DIR, 'nf4_reference.safetensors'));
  bnbStateDict = await readSafetensorsFile(path.join(NF4_FIXTURE_DIR, 'nf4_bnb_state_dict.safetensors'));
});

describe('NF4 reference (fixtures/reference/nf4)', () => {
  it('uses the same 16 codes and 15 thresholds, bit for bit', () => {
    expectBitIdentical(NF4_CODE, f32('nf4_code'));
    expectBitIdentical(NF4_THRESHOLDS, f32('nf4_thresholds'));
  });

  it('reproduces the packed codes and absmax byte for byte, and the dequantized tensor exactly', () => {
    const input = f32('input');
    const { packed, absmax } = quantize4bit(input, { type: 'nf4', blockSize: 64 });
    expect(Buffer.from(packed).equals(Buffer.from(u8('packed')))).toBe(true);
    expectBitIdentical(absmax, f32('absmax'));
    // The unpacked codes: element 2k in the high nibble of byte k.
    const codes = u8('codes');
    for (let i = 0; i < codes.length; i++) expect((i & 1) === 0 ? packed[i >> 1]! >> 4 : packed[i >> 1]! & 15).toBe(codes[i]);
    const state = quantizeWeight(input, [128, 96], { type: 'nf4', doubleQuant: false });
    expectBitIdentical(dequantizeWeight(state), f32('dequantized'));
  });

  it('reproduces the double-quantization state byte for byte: offset, 8-bit absmax codes, nested absmax', () => {
    const state = quantizeWeight(f32('input'), [128, 96], { type: 'nf4', doubleQuant: true });
    const nested = state.nested!;
    expect(nested.offset).toBe(f32('dq_offset')[0]);
    expect(Buffer.from(nested.codes).equals(Buffer.from(u8('dq_absmax_quantized')))).toBe(true);
    expectBitIdentical(nested.absmax, f32('dq_absmax2'));
    expectBitIdentical(nested.quantMap, f32('dq_dynamic_code'));
    expectBitIdentical(absmaxOf(state), f32('dq_absmax_dequantized'));
    expectBitIdentical(dequantizeWeight(state), f32('dq_dequantized'));
  });

  it('generates the signed dynamic map bit-identical to the stored nested_quant_map', () => {
    expectBitIdentical(DYNAMIC_MAP_SIGNED, f32('dq_dynamic_code'));
  });

  it("writes bitsandbytes' state-dict tensors byte for byte, JSON blob included", () => {
    const state = quantizeWeight(f32('input'), [128, 96], { type: 'nf4', doubleQuant: true });
    const entries = quantStateToEntries(state);
    expect([...entries.keys()].sort()).toEqual([...bnbStateDict.tensors.keys()].sort());
    for (const [name, expected] of bnbStateDict.tensors) {
      const actual = entries.get(name)!;
      expect({ name, dtype: actual.dtype, shape: actual.shape }).toEqual({ name, dtype: expected.dtype, shape: expected.shape });
      expect(Buffer.from(actual.data).equals(Buffer.from(expected.data)), name).toBe(true);
    }
    expect(quantStateBlob(state)).toBe(
      '{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [128, 96], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 2.579225540161133}',
    );
  });

  it('serializes to the very bytes of nf4_bnb_state_dict.safetensors', async () => {
    const state = quantizeWeight(f32('input'), [128, 96], { type: 'nf4', doubleQuant: true });
    const bytes = serializeSafetensors(quantStateToEntries(state), { format: 'pt' });
    const file = await readFile(path.join(NF4_FIXTURE_DIR, 'nf4_bnb_state_dict.safetensors'));
    expect(Buffer.from(bytes).equals(file)).toBe(true);
  });

  it('reads the bitsandbytes state dict back to the reference dequantized tensor', () => {
    const state = quantStateFromEntries(bnbStateDict.tensors);
    expect(state.shape).toEqual([128, 96]);
    expect(state.quantType).toBe('nf4');
    expect(state.nested?.offset).toBe(f32('dq_offset')[0]);
    expectBitIdentical(dequantizeWeight(state), f32('dq_dequantized'));
  });
});
