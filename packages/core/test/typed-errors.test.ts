import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AdapterModel,
  ConfigError,
  createLoraRegistry,
  initRuntime,
  isTargetModule,
  loadAdapter,
  lora,
  NonFiniteTensorError,
  readSafetensorsFile,
  SafetensorsError,
  saveAdapter,
  serializeAdapter,
  writeSafetensorsFile,
  type SafetensorsEntry,
} from '../src/index.js';
import { parseConfigWithSchema } from '../src/internal.js';
import { withoutTensorLeaks } from '../src/testing.js';
import { z } from 'zod';
import { Gpt2ShapedTree } from './helpers.js';

const make = () =>
  AdapterModel.create(new Gpt2ShapedTree({ width: 16, seed: 1 }), {
    registry: createLoraRegistry({ plugins: [lora({ seed: 3 })] }),
    config: { r: 4, loraAlpha: 8, targetModules: ['c_attn', 'c_proj'] },
  });

describe('loadAdapter: weights that are not finite floats', () => {
  let directory: string;
  beforeAll(async () => {
    await initRuntime();
    directory = await mkdtemp(path.join(tmpdir(), 'lora-typed-errors-'));
    const adapterModel = make();
    await saveAdapter(adapterModel, path.join(directory, 'good'));
    adapterModel.dispose();
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  async function variant(name: string, change: (key: string, entry: SafetensorsEntry) => SafetensorsEntry): Promise<{ dir: string; key: string }> {
    const good = await readSafetensorsFile(path.join(directory, 'good', 'adapter_model.safetensors'));
    const key = [...good.tensors.keys()].sort()[0]!;
    const tensors = new Map(good.tensors);
    tensors.set(key, change(key, good.tensors.get(key)!));
    const dir = path.join(directory, name);
    const adapterModel = make();
    await saveAdapter(adapterModel, dir);
    adapterModel.dispose();
    await writeSafetensorsFile(path.join(dir, 'adapter_model.safetensors'), tensors);
    return { dir, key };
  }

  it('refuses NaN or Infinity with a NonFiniteTensorError naming file and tensor, and loads them with allowNonFinite', async () => {
    const { dir, key } = await variant('nan', (_, entry) => {
      const values = new Float32Array(entry.data.slice().buffer);
      values[1] = Number.NaN;
      values[2] = Number.POSITIVE_INFINITY;
      return { ...entry, data: new Uint8Array(values.buffer) };
    });
    await withoutTensorLeaks(async () => {
      const adapterModel = make();
      adapterModel.deleteAdapter('default');
      const error = await loadAdapter(adapterModel, dir).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(NonFiniteTensorError);
      expect(error).toMatchObject({ tensor: key, count: 2, file: path.join(dir, 'adapter_model.safetensors') });
      expect((error as Error).message).toContain(path.join(dir, 'adapter_model.safetensors'));
      expect(adapterModel.adapterNames).toEqual([]);
      await loadAdapter(adapterModel, dir, { allowNonFinite: true });
      expect(adapterModel.adapterNames).toEqual(['default']);
      // Loading them was allowed; saving them never is, and a save of several adapters writes none.
      expect(() => serializeAdapter(adapterModel)).toThrow(NonFiniteTensorError);
      await loadAdapter(adapterModel, path.join(directory, 'good'), { adapterName: 'clean' });
      const out = await mkdtemp(path.join(tmpdir(), 'lora-nonfinite-save-'));
      try {
        const saving = await saveAdapter(adapterModel, out, { adapterNames: ['clean', 'default'] }).catch((caught: unknown) => caught);
        expect(saving).toBeInstanceOf(NonFiniteTensorError);
        expect(saving).toMatchObject({ tensor: key, count: 2 });
        expect((saving as Error).message).toMatch(/^\[@lora\/core\] Not writing adapter_model\.safetensors: tensor ".*" holds 2 non-finite values \(first: NaN\); nothing was written\./u);
        expect(await readdir(out)).toEqual([]);
        // An AdapterModel with no adapter left: an error, not a save that writes nothing.
        const emptied = make();
        emptied.deleteAdapter('default');
        await expect(saveAdapter(emptied, path.join(out, 'empty'))).rejects.toThrow(
          /^\[@lora\/core\] saveAdapter: the AdapterModel has no adapter to save \(it was unloaded or disposed, or every adapter deleted\); nothing was written to .*empty\.$/u,
        );
        expect(await readdir(out)).toEqual([]);
        emptied.dispose();
      } finally {
        await rm(out, { recursive: true, force: true });
      }
      adapterModel.dispose();
    });
  });

  it('names adapter_config.json and the field as the file spells it when the saved config is invalid, without an options-style example', async () => {
    const dir = path.join(directory, 'bad-config');
    await saveAdapter(make(), dir);
    const file = path.join(dir, 'adapter_config.json');
    const json = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
    await writeFile(file, JSON.stringify({ ...json, lora_alpha: '8' }));
    const adapterModel = make();
    adapterModel.deleteAdapter('default');
    const error = await loadAdapter(adapterModel, dir).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ConfigError);
    expect(error).toMatchObject({ field: 'lora_alpha' });
    expect((error as Error).message).toBe(`[lora] Invalid config: lora_alpha must be of type number, got "8". Fix it in ${file}.`);
    // Targets the model does not have: the layer names are still suggested.
    await writeFile(file, JSON.stringify({ ...json, target_modules: ['q_proj'] }));
    const targets = await loadAdapter(adapterModel, dir).catch((caught: unknown) => caught);
    expect(targets).toMatchObject({ field: 'target_modules' });
    expect((targets as Error).message).toMatch(new RegExp(`^\\[lora\\] Invalid config: target_modules must be names matching at least one linear layer of the model, got \\["q_proj"\\]\\. Fix it in ${file.replace(/[.*+?^${}()|[\]\\]/gu, '\\$&')}\\. Linear layers here are named like: transformer\\.h\\.0\\.attn\\.c_attn`, 'u'));
    expect(adapterModel.adapterNames).toEqual([]);
    // An adapter name that is not a string is refused before anything is added.
    await writeFile(file, JSON.stringify(json));
    await expect(loadAdapter(adapterModel, dir, { adapterName: 5 as unknown as string })).rejects.toThrow(/adapterName must be letters, digits, _ or -, got 5/u);
    expect(adapterModel.adapterNames).toEqual([]);
    adapterModel.dispose();
  });

  it('refuses an I32 tensor where a float is expected with a SafetensorsError, not tfjs\'s own Error', async () => {
    const { dir, key } = await variant('int', (_, entry) => ({ dtype: 'I32', shape: entry.shape, data: new Uint8Array(entry.data.byteLength) }));
    const adapterModel = make();
    adapterModel.deleteAdapter('default');
    const error = await loadAdapter(adapterModel, dir).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(SafetensorsError);
    expect(error).toMatchObject({ code: 'UNEXPECTED_DTYPE', tensor: key });
    expect((error as Error).message).toMatch(/in .*int\/adapter_model\.safetensors in tensor ".*": dtype I32 where a float dtype \(F32, F16 or BF16\) is expected/u);
    adapterModel.dispose();
  });
});

describe('target selection errors', () => {
  it('turns an invalid regex into a ConfigError naming the field, from the schema and from raw matching alike', () => {
    const plugin = lora();
    expect(() => plugin.fromPeftJson({ peft_type: 'LORA', target_modules: '((' })).toThrow(ConfigError);
    expect(() => plugin.fromPeftJson({ peft_type: 'LORA', target_modules: '((' })).toThrow(/targetModules must be a valid regular expression, got "\(\("/u);
    const selection = { targetModules: '((', excludeModules: null, layersToTransform: null, layersPattern: null, modulesToSave: null };
    expect(() => isTargetModule('h.0.attn', selection)).toThrow(ConfigError);
  });

  it('says what type was expected for a wrong type, and reports layers_to_transform as itself', () => {
    const plugin = lora();
    expect(() => plugin.fromPeftJson({ peft_type: 'LORA', target_modules: 42 })).toThrow(/targetModules must be a list or a string, got 42\./u);
    expect(() => plugin.fromPeftJson({ peft_type: 'LORA', target_modules: ['q'], layers_to_transform: 'abc' })).toThrow(/layersToTransform must be a number or a list, got "abc"\./u);
    expect(() => plugin.fromPeftJson({ peft_type: 'LORA', target_modules: 'q.*', layers_to_transform: [1] })).toThrow(/^\[lora\] Invalid config: layersToTransform must be unset when targetModules is a regex string/u);
  });

  it('lists every branch of a union with a literal, and reads a discriminated union without zod\'s text', () => {
    // One branch a type, one a literal: both named (it said only "gaussian").
    expect(() => lora().parseConfig({ r: 2, targetModules: ['q'], initLoraWeights: 'pissa' })).toThrow(/initLoraWeights must be a boolean or "gaussian", got "pissa"\./u);
    const schema = z.object({ kind: z.discriminatedUnion('kind', [z.object({ kind: z.literal('discrete') }), z.object({ kind: z.literal('continuous') })]) });
    expect(() => parseConfigWithSchema(schema, { kind: { kind: 'other' } }, { plugin: 'test' })).toThrow(/^\[test\] Invalid config: kind\.kind must be one of "discrete", "continuous", got "other"\./u);
  });
});
