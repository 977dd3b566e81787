import fc from 'fast-check';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LoraError,
  lora,
  parseSafetensors,
  readAdapterConfig,
  SafetensorsError,
  serializeSafetensors,
  type PeftConfigJson,
  type SafetensorsDtype,
  type SafetensorsEntry,
  type SafetensorsFile,
} from '../src/index.js';

const RUNS = 1000;
const SIZES: Record<SafetensorsDtype, number> = { F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, U8: 1 };

/** A valid entry: a dtype, a small shape and exactly the bytes it needs. */
const entryArbitrary: fc.Arbitrary<SafetensorsEntry> = fc
  .tuple(fc.constantFrom<SafetensorsDtype>('F32', 'F16', 'BF16', 'I64', 'I32', 'U8'), fc.array(fc.nat(4), { maxLength: 3 }))
  .chain(([dtype, shape]) =>
    fc.uint8Array({ minLength: shape.reduce((a, b) => a * b, 1) * SIZES[dtype], maxLength: shape.reduce((a, b) => a * b, 1) * SIZES[dtype] }).map((data) => ({ dtype, shape, data })),
  );

const validFileArbitrary = fc.record({
  tensors: fc.dictionary(fc.string({ minLength: 1, maxLength: 12 }).filter((name) => name !== '__metadata__'), entryArbitrary, { maxKeys: 5 }),
  metadata: fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 3 }),
});

function header(json: string, data: Uint8Array): Uint8Array {
  const text = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + text.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(text.length), true);
  out.set(text, 8);
  out.set(data, 8 + text.length);
  return out;
}

/** Headers with plausible and implausible entries, deep nesting included, over random data. */
const hostileFileArbitrary = fc.oneof(
  fc.uint8Array({ maxLength: 64 }),
  fc
    .tuple(
      fc.dictionary(
        fc.string({ maxLength: 10 }),
        fc.oneof(
          fc.jsonValue({ maxDepth: 4 }),
          fc.record({
            dtype: fc.oneof(fc.constantFrom('F32', 'I32', 'U8', 'F64', 'toString', '__proto__'), fc.jsonValue({ maxDepth: 2 })),
            shape: fc.oneof(fc.array(fc.integer({ min: -2, max: 6 }), { maxLength: 3 }), fc.jsonValue({ maxDepth: 3 })),
            data_offsets: fc.oneof(fc.tuple(fc.integer({ min: -1, max: 40 }), fc.integer({ min: -1, max: 40 })), fc.jsonValue({ maxDepth: 3 })),
          }),
        ),
        { maxKeys: 4 },
      ),
      fc.nat(300),
      fc.uint8Array({ maxLength: 40 }),
    )
    .map(([object, depth, data]) => {
      // Some entries nest deep enough to break a recursive describer (the reported RangeError).
      const json = JSON.stringify(object);
      const nested = depth > 250 ? json.replace(/\{/u, `{"deep":{"dtype":${'['.repeat(depth * 10)}${']'.repeat(depth * 10)},"shape":[],"data_offsets":[0,0]},`) : json;
      return header(nested, data);
    }),
);

/** Same metadata, names, dtypes, shapes and bytes (plain comparisons: this runs thousands of times). */
function sameFile(actual: SafetensorsFile, expected: SafetensorsFile): boolean {
  const keys = (o: object) => Object.keys(o).sort().join('\u0000');
  if (keys(actual.metadata) !== keys(expected.metadata)) return false;
  if (Object.keys(expected.metadata).some((key) => actual.metadata[key] !== expected.metadata[key])) return false;
  if (actual.tensors.size !== expected.tensors.size) return false;
  for (const [name, entry] of expected.tensors) {
    const other = actual.tensors.get(name);
    if (!other || other.dtype !== entry.dtype || other.shape.join(',') !== entry.shape.join(',')) return false;
    if (!Buffer.from(other.data.buffer, other.data.byteOffset, other.data.byteLength).equals(Buffer.from(entry.data.buffer, entry.data.byteOffset, entry.data.byteLength))) return false;
  }
  return true;
}

describe('parseSafetensors (property-based)', () => {
  it(`round-trips ${RUNS} generated valid files exactly`, () => {
    fc.assert(
      fc.property(validFileArbitrary, ({ tensors, metadata }) => {
        const file: SafetensorsFile = { metadata, tensors: new Map(Object.entries(tensors)) };
        return sameFile(parseSafetensors(serializeSafetensors(file.tensors, metadata)), file);
      }),
      { numRuns: RUNS },
    );
  });

  it(`rejects ${RUNS} hostile inputs only with SafetensorsError, and every input it accepts round-trips`, () => {
    fc.assert(
      fc.property(hostileFileArbitrary, (bytes) => {
        let parsed: SafetensorsFile;
        try {
          parsed = parseSafetensors(bytes);
        } catch (error) {
          return error instanceof SafetensorsError && !error.message.includes('\n');
        }
        return sameFile(parseSafetensors(serializeSafetensors(parsed.tensors, parsed.metadata)), parsed);
      }),
      { numRuns: RUNS },
    );
  });

  it('describes a ~4,100-level nested dtype / shape / data_offsets with a SafetensorsError, not a RangeError', () => {
    const deep = `${'['.repeat(4100)}${']'.repeat(4100)}`;
    for (const field of ['dtype', 'shape', 'data_offsets']) {
      const entry = { dtype: '"F32"', shape: '[1]', data_offsets: '[0,4]', [field]: deep };
      const bytes = header(`{"t":{"dtype":${entry.dtype},"shape":${entry.shape},"data_offsets":${entry.data_offsets}}}`, new Uint8Array(4));
      expect(() => parseSafetensors(bytes)).toThrow(SafetensorsError);
      try {
        parseSafetensors(bytes);
      } catch (error) {
        expect((error as Error).message.length).toBeLessThan(300);
      }
    }
  });
});

const loraFieldValues = {
  r: fc.oneof(fc.integer({ min: -2, max: 64 }), fc.double(), fc.string({ maxLength: 3 })),
  lora_alpha: fc.oneof(fc.integer({ min: -2, max: 64 }), fc.double({ noNaN: true }), fc.constant(null)),
  lora_dropout: fc.oneof(fc.double({ min: -0.5, max: 1.5, noNaN: true }), fc.constant('0.1')),
  target_modules: fc.oneof(
    fc.array(fc.constantFrom('q_proj', 'v_proj', 'c_attn', ''), { maxLength: 3 }),
    fc.constantFrom('((', '.*attn.*', 'q_proj|v_proj', '[', ''),
    fc.integer(),
    fc.constant(null),
  ),
  layers_to_transform: fc.oneof(fc.integer({ min: -1, max: 5 }), fc.array(fc.integer({ min: -1, max: 5 }), { maxLength: 3 }), fc.string({ maxLength: 3 }), fc.constant(null)),
  layers_pattern: fc.oneof(fc.constantFrom('h', 'layers', '((', ''), fc.constant(null)),
  modules_to_save: fc.oneof(fc.array(fc.constantFrom('score', 'lm_head', '(('), { maxLength: 2 }), fc.constant(null), fc.integer()),
  rank_pattern: fc.oneof(fc.dictionary(fc.constantFrom('c_attn', '((', 'h\\.0'), fc.oneof(fc.integer({ min: -1, max: 16 }), fc.string({ maxLength: 2 }))), fc.constant(7)),
  bias: fc.oneof(fc.constantFrom('none', 'all', 'lora_only', 'some'), fc.boolean()),
  fan_in_fan_out: fc.oneof(fc.boolean(), fc.constant('yes')),
  use_dora: fc.oneof(fc.boolean(), fc.constant(1)),
  init_lora_weights: fc.oneof(fc.boolean(), fc.constantFrom('gaussian', 'pissa')),
  task_type: fc.oneof(fc.constantFrom('CAUSAL_LM', 'SEQ_CLS'), fc.constant(null), fc.integer()),
  auto_mapping: fc.oneof(fc.constant(null), fc.record({ base_model_class: fc.string({ maxLength: 5 }) })),
};

/** Values PEFT would write, so that acceptance (and its round trip) is exercised too. */
const validLoraFieldValues = {
  r: fc.integer({ min: 1, max: 64 }),
  lora_alpha: fc.integer({ min: 1, max: 64 }),
  lora_dropout: fc.double({ min: 0, max: 0.9, noNaN: true }),
  target_modules: fc.oneof(fc.uniqueArray(fc.constantFrom('q_proj', 'v_proj', 'c_attn', 'c_proj'), { minLength: 1, maxLength: 3 }), fc.constantFrom('.*attn.*', 'q_proj|v_proj')),
  modules_to_save: fc.oneof(fc.array(fc.constantFrom('score', 'lm_head'), { maxLength: 2 }), fc.constant(null)),
  rank_pattern: fc.dictionary(fc.constantFrom('c_attn', 'h\\.0\\.attn'), fc.integer({ min: 1, max: 16 }), { maxKeys: 2 }),
  bias: fc.constantFrom('none', 'all', 'lora_only'),
  fan_in_fan_out: fc.boolean(),
  use_rslora: fc.boolean(),
  init_lora_weights: fc.oneof(fc.boolean(), fc.constant('gaussian')),
  task_type: fc.oneof(fc.constantFrom('CAUSAL_LM', 'SEQ_CLS'), fc.constant(null)),
  base_model_name_or_path: fc.oneof(fc.string({ maxLength: 12 }), fc.constant(null)),
};

const adapterConfigArbitrary: fc.Arbitrary<Record<string, unknown>> = fc
  .tuple(
    fc.oneof(fc.record(loraFieldValues, { requiredKeys: [] }), fc.record(validLoraFieldValues, { requiredKeys: ['r'] })),
    // Fields this version does not know are kept verbatim (PEFT adds fields over time).
    fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }).map((key) => `x_${key}`), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 2 }),
  )
  .map(([fields, extra]) => ({ ...extra, ...fields, peft_type: 'LORA' }));

describe('adapter_config.json parsing (property-based)', () => {
  let directory: string;
  beforeAll(async () => {
    directory = await mkdtemp(path.join(tmpdir(), 'lora-fuzz-config-'));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it(`rejects ${RUNS} generated configs only with LoraError subclasses, and every config it accepts round-trips`, () => {
    const plugin = lora();
    let accepted = 0;
    fc.assert(
      fc.property(adapterConfigArbitrary, (json) => {
        let config;
        try {
          config = plugin.fromPeftJson(json as PeftConfigJson);
        } catch (error) {
          return error instanceof LoraError && !error.message.includes('\n') && !error.message.includes('must be Invalid input');
        }
        accepted += 1;
        // Saving writes inference_mode: true, as PEFT does; everything else comes back the same.
        const saved = plugin.toPeftJson(config);
        const reloaded = plugin.fromPeftJson(saved);
        return isDeepStrictEqual(reloaded, { ...config, inferenceMode: true }) && isDeepStrictEqual(plugin.toPeftJson(reloaded), saved);
      }),
      { numRuns: RUNS },
    );
    // Both sides are exercised: some configs are valid, most are not.
    expect(accepted).toBeGreaterThan(10);
    expect(accepted).toBeLessThan(RUNS);
  });

  it(`reads ${RUNS / 5} generated adapter_config.json files through readAdapterConfig, failing only with LoraError naming the file`, async () => {
    const file = path.join(directory, 'adapter_config.json');
    await fc.assert(
      fc.asyncProperty(fc.oneof(adapterConfigArbitrary.map((json) => JSON.stringify(json)), fc.string({ maxLength: 20 }), fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify(v))), async (text) => {
        await writeFile(file, text);
        try {
          const json = await readAdapterConfig(directory);
          expect(typeof json.peft_type).toBe('string');
        } catch (error) {
          expect(error).toBeInstanceOf(LoraError);
          expect((error as Error).message).toContain(file);
        }
      }),
      { numRuns: RUNS / 5 },
    );
  });
});
