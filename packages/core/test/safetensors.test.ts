import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  entryToFloat32,
  entryToInt32,
  float32Entry,
  parseSafetensors,
  readSafetensorsFile,
  SafetensorsError,
  serializeSafetensors,
  writeFileAtomic,
  type SafetensorsEntry,
} from '../src/index.js';
import { randomValues } from './helpers.js';

const FIXTURES = path.resolve(__dirname, '../../../fixtures/reference');

function header(json: unknown, data: Uint8Array = new Uint8Array(0), lengthOverride?: bigint): Uint8Array {
  const text = new TextEncoder().encode(JSON.stringify(json));
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return out;
}

function expectCode(bytes: Uint8Array, code: string): SafetensorsError {
  let caught: unknown;
  try {
    parseSafetensors(bytes);
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(SafetensorsError);
  expect((caught as SafetensorsError).code).toBe(code);
  return caught as SafetensorsError;
}

describe('parseSafetensors / serializeSafetensors', () => {
  let directory: string;
  beforeAll(async () => {
    directory = await mkdtemp(path.join(tmpdir(), 'lora-safetensors-'));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it('re-serialises a transformers-written file byte for byte', async () => {
    const original = new Uint8Array(await readFile(path.join(FIXTURES, 'models/gpt2/model.safetensors')));
    const parsed = parseSafetensors(original);
    expect(parsed.metadata).toEqual({ format: 'pt' });
    expect(parsed.tensors.size).toBe(28);
    expect(parsed.tensors.get('transformer.h.0.attn.c_attn.weight')!.shape).toEqual([64, 192]);
    expect(Buffer.from(serializeSafetensors(parsed.tensors, parsed.metadata)).equals(Buffer.from(original))).toBe(true);
  });

  it('reads zero-size tensors that share an offset (PEFT rank-0 AdaLoRA modules)', async () => {
    const file = await readSafetensorsFile(path.join(FIXTURES, 'adapters/gpt2_adalora/adapter_model.safetensors'));
    const empty = file.tensors.get('base_model.model.transformer.h.1.attn.c_attn.lora_A')!;
    expect(empty.shape).toEqual([0, 64]);
    expect(empty.data.byteLength).toBe(0);
  });

  it('round-trips every supported dtype and upcasts F16 / BF16 exactly', () => {
    const f16 = new Uint8Array([0x00, 0x3c, 0x00, 0xc0, 0x00, 0x7c, 0x01, 0x00]); // 1, -2, +inf, smallest subnormal
    const bf16 = new Uint8Array([0x80, 0x3f, 0x40, 0xc0]); // 1, -3
    const i64 = new Uint8Array(16);
    new DataView(i64.buffer).setBigInt64(0, -5n, true);
    new DataView(i64.buffer).setBigInt64(8, 1234567n, true);
    const tensors: Record<string, SafetensorsEntry> = {
      f32: float32Entry(new Float32Array([1.5, -2.25]), [2]),
      f16: { dtype: 'F16', shape: [2, 2], data: f16 },
      bf16: { dtype: 'BF16', shape: [2], data: bf16 },
      i64: { dtype: 'I64', shape: [2], data: i64 },
      i32: { dtype: 'I32', shape: [1], data: new Uint8Array([7, 0, 0, 0]) },
      u8: { dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 255]) },
    };
    const parsed = parseSafetensors(serializeSafetensors(tensors, { format: 'pt' }));
    expect(Array.from(entryToFloat32(parsed.tensors.get('f32')!))).toEqual([1.5, -2.25]);
    expect(Array.from(entryToFloat32(parsed.tensors.get('f16')!))).toEqual([1, -2, Infinity, 2 ** -24]);
    expect(Array.from(entryToFloat32(parsed.tensors.get('bf16')!))).toEqual([1, -3]);
    expect(Array.from(entryToInt32(parsed.tensors.get('i64')!))).toEqual([-5, 1234567]);
    expect(Array.from(entryToInt32(parsed.tensors.get('i32')!))).toEqual([7]);
    expect(Array.from(entryToInt32(parsed.tensors.get('u8')!))).toEqual([1, 2, 255]);
  });

  it('refuses to write metadata that is not a string (the reader, like the Python library, refuses it)', () => {
    const tensors = new Map([['w', { dtype: 'F32' as const, shape: [1], data: new Uint8Array(4) }]]);
    expect(() => serializeSafetensors(tensors, { step: 5 } as unknown as Record<string, string>)).toThrow(
      '[@lora/core] Invalid config: metadata.step must be a string (safetensors metadata holds strings only), got 5. Pass e.g. { "step": "5" }.',
    );
    expect(parseSafetensors(serializeSafetensors(tensors, { step: '5' })).metadata).toEqual({ step: '5' });
  });

  it('rejects a file shorter than the length field', () => {
    expectCode(new Uint8Array(5), 'TRUNCATED');
  });

  it('rejects a header length past the end of the file', () => {
    expectCode(header({}, new Uint8Array(0), 1000n), 'TRUNCATED');
  });

  it('rejects an absurd header length', () => {
    expectCode(header({}, new Uint8Array(0), 2n ** 62n), 'HEADER_TOO_LARGE');
  });

  it('rejects a header that is not a JSON object', () => {
    expectCode(header([1, 2]), 'INVALID_HEADER');
    const bytes = header({ a: 1 });
    bytes[9] = 0xff;
    expectCode(bytes, 'INVALID_HEADER');
  });

  it('rejects an unknown dtype and names the tensor', () => {
    const error = expectCode(header({ x: { dtype: 'F128', shape: [1], data_offsets: [0, 16] } }, new Uint8Array(16)), 'UNKNOWN_DTYPE');
    expect(error.tensor).toBe('x');
    expect(error.message).toMatch(/"x"/u);
  });

  it('rejects a shape that does not match the byte range', () => {
    expectCode(header({ x: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, new Uint8Array(8)), 'SIZE_MISMATCH');
    expectCode(header({ x: { dtype: 'F32', shape: [-1], data_offsets: [0, 8] } }, new Uint8Array(8)), 'INVALID_SHAPE');
  });

  it('rejects out-of-range, overlapping and gapped offsets', () => {
    expectCode(header({ x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, new Uint8Array(4)), 'INVALID_OFFSETS');
    expectCode(
      header(
        { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
        new Uint8Array(12),
      ),
      'INVALID_OFFSETS',
    );
    expectCode(header({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } }, new Uint8Array(8)), 'INVALID_OFFSETS');
    expectCode(header({ a: { dtype: 'F32', shape: [1], data_offsets: [8, 4] } }, new Uint8Array(8)), 'INVALID_OFFSETS');
  });

  it('throws only SafetensorsError on 1,000 mutated files', async () => {
    const original = new Uint8Array(await readFile(path.join(FIXTURES, 'adapters/gpt2_lora/adapter_model.safetensors')));
    const headerLength = Number(new DataView(original.buffer, original.byteOffset).getBigUint64(0, true));
    const noise = randomValues(20_000, 77).map((v) => Math.abs(v));
    let cursor = 0;
    const next = () => noise[cursor++ % noise.length]!;
    let rejected = 0;
    for (let trial = 0; trial < 1000; trial++) {
      let bytes = original.slice();
      const kind = trial % 4;
      if (kind === 0) {
        // Flip bytes inside the header (JSON damage, changed numbers, changed dtypes).
        for (let k = 0; k < 1 + Math.floor(next() * 4); k++) bytes[8 + Math.floor(next() * headerLength)] = Math.floor(next() * 256);
      } else if (kind === 1) {
        bytes = bytes.slice(0, Math.floor(next() * bytes.length));
      } else if (kind === 2) {
        bytes[Math.floor(next() * 8)] = Math.floor(next() * 256);
      } else {
        // Replace a digit in the header with another digit (valid JSON, wrong offsets or shapes).
        const text = new TextDecoder().decode(bytes.subarray(8, 8 + headerLength));
        const digits = [...text.matchAll(/\d/gu)].map((m) => m.index!);
        const at = digits[Math.floor(next() * digits.length)]!;
        bytes[8 + at] = 0x30 + Math.floor(next() * 10);
      }
      try {
        parseSafetensors(bytes);
      } catch (error) {
        if (!(error instanceof SafetensorsError)) throw new Error(`trial ${trial}: threw ${String(error)}`);
        rejected += 1;
      }
    }
    // Most mutations must be caught (a few leave a valid file, e.g. a digit replaced by itself).
    expect(rejected).toBeGreaterThan(700);
  });

  it('leaves the previous file intact and no temporary file when a write fails midway', async () => {
    const target = path.join(directory, 'adapter_model.safetensors');
    const good = serializeSafetensors({ x: float32Entry(new Float32Array([1, 2, 3]), [3]) }, { format: 'pt' });
    await writeFileAtomic(target, good);
    function* failing(): Generator<Uint8Array> {
      yield new Uint8Array(16);
      throw new Error('disk unplugged');
    }
    await expect(writeFileAtomic(target, failing())).rejects.toThrow('disk unplugged');
    const after = await readSafetensorsFile(target);
    expect(Array.from(entryToFloat32(after.tensors.get('x')!))).toEqual([1, 2, 3]);
    expect((await readdir(directory)).filter((name) => name.endsWith('.tmp'))).toEqual([]);
    await writeFile(path.join(directory, 'other.bin'), 'x');
  });
});
