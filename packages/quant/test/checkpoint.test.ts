import * as tf from '@tensorflow/tfjs-core';
import {
  AdapterModel,
  CheckpointError,
  ConfigError,
  LoraError,
  NonFiniteTensorError,
  createLoraRegistry,
  initRuntime,
  lora,
  readJsonFile,
  readSafetensorsFile,
  writeJsonAtomic,
  writeSafetensorsFile,
  type SafetensorsEntry,
} from '@lora/core';
import { setFaultInjector } from '@lora/core/internal';
import { withoutTensorLeaks } from '@lora/core/testing';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  QuantLinear,
  QuantStateError,
  loadQuantizedModel,
  loadQuantizedStateDict,
  quant,
  quantizeModel,
  quantizedStateDict,
  saveQuantizedModel,
  saveQuantizedPretrained,
} from '../src/index.js';
import { TinyMlp } from './helpers.js';

let directory: string;
beforeAll(async () => {
  await initRuntime();
  directory = await mkdtemp(path.join(tmpdir(), 'lora-quant-'));
});
afterAll(async () => {
  await rm(directory, { recursive: true, force: true });
});

function quantizedMlp(seed = 7, options: Parameters<typeof quantizeModel>[1] = {}): TinyMlp {
  const model = new TinyMlp({ seed });
  quantizeModel(model, options);
  model.eval();
  return model;
}

function packedOf(model: TinyMlp): Map<string, Buffer> {
  const result = new Map<string, Buffer>();
  for (const [modulePath, module] of model.namedModules()) {
    if (module instanceof QuantLinear) result.set(modulePath, Buffer.concat([Buffer.from(module.quantState.packed), Buffer.from(module.quantState.nested?.codes ?? new Uint8Array())]));
  }
  return result;
}

describe('quantizedStateDict / loadQuantizedStateDict', () => {
  it("writes bitsandbytes' keys and dtypes for each 4-bit layer", async () => {
    await withoutTensorLeaks(() => {
      const model = quantizedMlp();
      const entries = quantizedStateDict(model);
      expect([...entries.keys()].sort()).toEqual([
        'fc1.bias',
        'fc1.weight',
        'fc1.weight.absmax',
        'fc1.weight.nested_absmax',
        'fc1.weight.nested_quant_map',
        'fc1.weight.quant_map',
        'fc1.weight.quant_state.bitsandbytes__nf4',
        'lm_head.bias',
        'lm_head.weight',
        'proj.bias',
        'proj.weight',
        'proj.weight.absmax',
        'proj.weight.nested_absmax',
        'proj.weight.nested_quant_map',
        'proj.weight.quant_map',
        'proj.weight.quant_state.bitsandbytes__nf4',
      ]);
      // 24·40 = 960 elements → 480 bytes, 15 blocks of 64.
      expect(entries.get('fc1.weight')).toMatchObject({ dtype: 'U8', shape: [480, 1] });
      expect(entries.get('fc1.weight.absmax')).toMatchObject({ dtype: 'U8', shape: [15] });
      expect(entries.get('fc1.weight.nested_absmax')).toMatchObject({ dtype: 'F32', shape: [1] });
      expect(entries.get('lm_head.weight')).toMatchObject({ dtype: 'F32', shape: [6, 40] });
      // The Conv1D-layout layer is stored [out, in] like transformers does.
      const blob = JSON.parse(new TextDecoder().decode(entries.get('proj.weight.quant_state.bitsandbytes__nf4')!.data));
      expect(blob.shape).toEqual([40, 40]);
      model.dispose();
    });
  });

  it('saves then loads to bit-identical packed weights and identical outputs', async () => {
    await withoutTensorLeaks(async () => {
      const model = quantizedMlp(7);
      const x = tf.randomNormal([5, 24], 0, 1, 'float32', 9);
      const expected = model.forward(x);
      await saveQuantizedModel(model, directory, { config: { model_type: 'tiny-mlp', hidden: 40 } });
      const loaded = await loadQuantizedModel(directory, { loadModel: () => new TinyMlp({ seed: 99 }) });
      loaded.model.eval();
      expect(loaded.quantizedModules).toEqual(['fc1', 'proj']);
      expect(loaded.model.fc1).toBeInstanceOf(QuantLinear);
      expect((loaded.model.proj as unknown as QuantLinear).sourceFanInFanOut).toBe(true);
      expect(packedOf(loaded.model)).toEqual(packedOf(model));
      const actual = loaded.model.forward(x);
      expect(Buffer.from(actual.dataSync().buffer).equals(Buffer.from(expected.dataSync().buffer))).toBe(true);
      tf.dispose([x, expected, actual]);
      model.dispose();
      loaded.model.dispose();
    });
  });

  it("writes transformers' quantization_config into config.json", async () => {
    const config = (await readJsonFile(path.join(directory, 'config.json'))) as Record<string, unknown>;
    expect(config['model_type']).toBe('tiny-mlp');
    expect(config['quantization_config']).toMatchObject({
      quant_method: 'bitsandbytes',
      load_in_4bit: true,
      bnb_4bit_quant_type: 'nf4',
      bnb_4bit_use_double_quant: true,
      bnb_4bit_compute_dtype: 'float32',
      bnb_4bit_quant_storage: 'uint8',
    });
    const file = await readSafetensorsFile(path.join(directory, 'model.safetensors'));
    expect(file.metadata).toEqual({ format: 'pt' });
  });

  it('round-trips FP4 without double quantization (F32 absmax)', async () => {
    await withoutTensorLeaks(() => {
      const model = quantizedMlp(3, { type: 'fp4', doubleQuant: false });
      const entries = quantizedStateDict(model);
      expect(entries.get('fc1.weight.absmax')).toMatchObject({ dtype: 'F32', shape: [15] });
      expect(entries.has('fc1.weight.quant_state.bitsandbytes__fp4')).toBe(true);
      const fresh = new TinyMlp({ seed: 50 });
      loadQuantizedStateDict(fresh, entries);
      expect(packedOf(fresh)).toEqual(packedOf(model));
      expect((fresh.fc1 as unknown as QuantLinear).quantState.absmax).toEqual((model.fc1 as unknown as QuantLinear).quantState.absmax);
      model.dispose();
      fresh.dispose();
    });
  });

  it('saves the base of a QLoRA model under plain paths, without adapter tensors', async () => {
    await withoutTensorLeaks(() => {
      const registry = createLoraRegistry({ plugins: [lora(), quant()] });
      const peft = AdapterModel.create(new TinyMlp({ seed: 7 }), { registry, config: { r: 2, targetModules: ['fc1'] }, transforms: ['quant'] });
      const plain = quantizedMlp(7);
      const fromPeft = quantizedStateDict(peft.model);
      const fromPlain = quantizedStateDict(plain);
      expect([...fromPeft.keys()].sort()).toEqual([...fromPlain.keys()].sort());
      for (const [name, entry] of fromPlain) expect(Buffer.from(fromPeft.get(name)!.data).equals(Buffer.from(entry.data))).toBe(true);
      peft.dispose();
      plain.dispose();
    });
  });
});

describe('saveQuantizedPretrained', () => {
  it('writes the same checkpoint from a float model as quantizeModel + saveQuantizedModel, leaving the model float', async () => {
    const other = await mkdtemp(path.join(tmpdir(), 'lora-quant-pretrained-'));
    try {
      await withoutTensorLeaks(async () => {
        const float = new TinyMlp({ seed: 7 });
        await saveQuantizedPretrained(float, other, { type: 'nf4', doubleQuant: true, config: { model_type: 'tiny-mlp' } });
        expect(float.fc1).not.toBeInstanceOf(QuantLinear);
        const quantized = quantizedMlp(7);
        const expected = quantizedStateDict(quantized);
        const written = (await readSafetensorsFile(path.join(other, 'model.safetensors'))).tensors;
        expect([...written.keys()].sort()).toEqual([...expected.keys()].sort());
        for (const [name, entry] of expected) expect(Buffer.from(written.get(name)!.data).equals(Buffer.from(entry.data)), name).toBe(true);
        float.dispose();
        quantized.dispose();
      });
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });

  it("skips keys the model lists in ignoredCheckpointKeys / tiedCheckpointKeys (as @lora/models' models)", async () => {
    await withoutTensorLeaks(() => {
      const model = quantizedMlp(7);
      const entries = quantizedStateDict(model);
      model.dispose();
      entries.set('fc1.attn_bias_buffer', entries.get('lm_head.bias')!);
      const fresh = Object.assign(new TinyMlp({ seed: 1 }), { ignoredCheckpointKeys: [/attn_bias_buffer$/u] });
      const result = loadQuantizedStateDict(fresh, entries);
      expect(result.ignored).toEqual(['fc1.attn_bias_buffer']);
      fresh.dispose();
    });
  });
});

describe('malformed quant state', () => {
  function entriesWith(change: (entries: Map<string, SafetensorsEntry>) => void): Map<string, SafetensorsEntry> {
    const model = quantizedMlp(7);
    const entries = quantizedStateDict(model);
    model.dispose();
    change(entries);
    return entries;
  }

  function expectRejected(entries: Map<string, SafetensorsEntry>, tensor: string, message: RegExp): void {
    const fresh = new TinyMlp({ seed: 1 });
    try {
      let caught: unknown;
      try {
        loadQuantizedStateDict(fresh, entries);
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(QuantStateError);
      expect(caught).toBeInstanceOf(CheckpointError);
      expect((caught as QuantStateError).tensor).toBe(tensor);
      expect((caught as Error).message).toContain(`"${tensor}"`);
      expect((caught as Error).message).toMatch(message);
      // Nothing was replaced.
      expect(fresh.fc1).not.toBeInstanceOf(QuantLinear);
    } finally {
      fresh.dispose();
    }
  }

  it('rejects a wrong absmax length, naming the tensor', async () => {
    await withoutTensorLeaks(() => {
      const entries = entriesWith((e) => {
        const absmax = e.get('proj.weight.absmax')!;
        e.set('proj.weight.absmax', { ...absmax, shape: [absmax.shape[0]! - 1], data: absmax.data.slice(1) });
      });
      expectRejected(entries, 'proj.weight.absmax', /absmax has 24 values, expected 25/u);
    });
  });

  it('rejects an unknown quant type, naming the tensor', async () => {
    await withoutTensorLeaks(() => {
      const entries = entriesWith((e) => {
        const blob = e.get('fc1.weight.quant_state.bitsandbytes__nf4')!;
        e.delete('fc1.weight.quant_state.bitsandbytes__nf4');
        e.set('fc1.weight.quant_state.bitsandbytes__int4', blob);
      });
      expectRejected(entries, 'fc1.weight.quant_state.bitsandbytes__int4', /unknown quant type "bitsandbytes__int4"/u);
    });
  });

  it('rejects a bad JSON blob, naming the tensor', async () => {
    await withoutTensorLeaks(() => {
      const notJson = entriesWith((e) => {
        const data = new TextEncoder().encode('{"quant_type": "nf4", "blocksize": 64,');
        e.set('fc1.weight.quant_state.bitsandbytes__nf4', { dtype: 'U8', shape: [data.length], data });
      });
      expectRejected(notJson, 'fc1.weight.quant_state.bitsandbytes__nf4', /not valid UTF-8 JSON/u);
      const wrongField = entriesWith((e) => {
        const blob = new TextDecoder().decode(e.get('fc1.weight.quant_state.bitsandbytes__nf4')!.data).replace('"shape": [40, 24]', '"shape": [40]');
        const data = new TextEncoder().encode(blob);
        e.set('fc1.weight.quant_state.bitsandbytes__nf4', { dtype: 'U8', shape: [data.length], data });
      });
      expectRejected(wrongField, 'fc1.weight.quant_state.bitsandbytes__nf4', /shape must be \[out, in\]/u);
      const extraField = entriesWith((e) => {
        const blob = new TextDecoder().decode(e.get('fc1.weight.quant_state.bitsandbytes__nf4')!.data).replace('}', ', "comment": "x"}');
        const data = new TextEncoder().encode(blob);
        e.set('fc1.weight.quant_state.bitsandbytes__nf4', { dtype: 'U8', shape: [data.length], data });
      });
      expectRejected(extraField, 'fc1.weight.quant_state.bitsandbytes__nf4', /unknown field "comment"/u);
    });
  });

  it('rejects a missing nested_absmax and a truncated packed weight, naming the tensor', async () => {
    await withoutTensorLeaks(() => {
      expectRejected(entriesWith((e) => e.delete('fc1.weight.nested_absmax')), 'fc1.weight.nested_absmax', /missing/u);
      const truncated = entriesWith((e) => {
        const weight = e.get('proj.weight')!;
        e.set('proj.weight', { dtype: 'U8', shape: [10, 1], data: weight.data.slice(0, 10) });
      });
      expectRejected(truncated, 'proj.weight', /has 10 bytes, but shape \[40, 40\] needs 800/u);
    });
  });

  it('rejects a 4-bit weight of the wrong size for the layer with a CheckpointError', async () => {
    await withoutTensorLeaks(() => {
      const model = quantizedMlp(7);
      const entries = quantizedStateDict(model);
      model.dispose();
      const other = new TinyMlp({ hidden: 48 });
      expect(() => loadQuantizedStateDict(other, entries)).toThrow(CheckpointError);
      expect(() => loadQuantizedStateDict(other, entries)).toThrow(/fc1\.weight" has shape \[40, 24\] but the layer at "fc1" is \[48, 24\]/u);
      other.dispose();
    });
  });

  it('refuses a config.json without quantization_config with a ConfigError', async () => {
    const plainDirectory = await mkdtemp(path.join(tmpdir(), 'lora-quant-plain-'));
    try {
      const { writeJsonAtomic } = await import('@lora/core');
      await writeJsonAtomic(path.join(plainDirectory, 'config.json'), { model_type: 'gpt2' });
      await expect(loadQuantizedModel(plainDirectory, { loadModel: () => new TinyMlp() })).rejects.toThrow(ConfigError);
    } finally {
      await rm(plainDirectory, { recursive: true, force: true });
    }
  });
});

/** The error `fn` throws or rejects with (the test fails if it does not throw). */
async function errorOf(fn: () => unknown): Promise<Error> {
  try {
    await fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected an error');
}

function nanEntry(entry: SafetensorsEntry): SafetensorsEntry {
  const values = new Float32Array(entry.data.byteLength / 4).fill(Number.NaN);
  return { dtype: 'F32', shape: entry.shape, data: new Uint8Array(values.buffer) };
}

describe('saveQuantizedModel', () => {
  it.each(['requantize', 'dequantize'] as const)('refuses, writing nothing, when an adapter is merged into the base (merge: %s)', async (merge) => {
    const target = path.join(directory, `merged-${merge}`);
    await withoutTensorLeaks(async () => {
      const registry = createLoraRegistry({ plugins: [lora({ seed: 3 }), quant({ merge })] });
      const peft = AdapterModel.create(new TinyMlp({ seed: 7 }), {
        registry,
        config: { r: 2, targetModules: ['fc1', 'proj'], initLoraWeights: false },
        transforms: ['quant'],
      });
      const plain = quantizedMlp(7);
      try {
        peft.merge();
        const error = await errorOf(() => saveQuantizedModel(peft.model, target));
        expect(error).toBeInstanceOf(LoraError);
        expect(error.message).toMatch(/^\[@lora\/quant\] Cannot save the base model: adapters are merged into "fc1" \("default"\), "proj" \("default"\).*nothing was written\. Call unmerge\(\) first/u);
        expect(error.message).not.toContain('\n');
        expect(existsSync(target)).toBe(false);
        expect(() => quantizedStateDict(peft.model)).toThrow(/adapters are merged into "fc1"/u);
        // Unmerged, the base saves as the never-merged base, byte for byte.
        peft.unmerge();
        await saveQuantizedModel(peft.model, target);
        const written = (await readSafetensorsFile(path.join(target, 'model.safetensors'))).tensors;
        const expected = quantizedStateDict(plain);
        expect([...written.keys()].sort()).toEqual([...expected.keys()].sort());
        for (const [name, entry] of expected) expect(Buffer.from(written.get(name)!.data).equals(Buffer.from(entry.data)), name).toBe(true);
      } finally {
        peft.dispose();
        plain.dispose();
      }
    });
  });

  it('never leaves new weights under an old config.json: a failed weights write keeps the old pair, a failure after it leaves no config', async () => {
    const target = path.join(directory, 'replace-pair');
    const [nf4, fp4] = [quantizedMlp(7, { type: 'nf4' }), quantizedMlp(8, { type: 'fp4' })];
    await saveQuantizedModel(nf4, target);
    const [oldConfig, oldWeights] = [await readFile(path.join(target, 'config.json'), 'utf8'), await readFile(path.join(target, 'model.safetensors'))];
    const failAt = (operation: string, suffix: string) =>
      setFaultInjector((point) => {
        if (point.operation === operation && point.path.endsWith(suffix)) throw Object.assign(new Error('disk full'), { code: 'ENOSPC' });
      });
    try {
      failAt('rename', 'model.safetensors');
      await expect(saveQuantizedModel(fp4, target)).rejects.toThrow('disk full');
      expect(await readFile(path.join(target, 'config.json'), 'utf8')).toBe(oldConfig);
      expect((await readFile(path.join(target, 'model.safetensors'))).equals(oldWeights)).toBe(true);
      // The new weights are in place when config.json fails: the old config is gone, not read with them.
      failAt('rename', 'config.json');
      await expect(saveQuantizedModel(fp4, target)).rejects.toThrow('disk full');
      expect(existsSync(path.join(target, 'config.json'))).toBe(false);
      expect((await readFile(path.join(target, 'model.safetensors'))).equals(oldWeights)).toBe(false);
    } finally {
      setFaultInjector(null);
    }
    await saveQuantizedModel(fp4, target);
    expect(JSON.parse(await readFile(path.join(target, 'config.json'), 'utf8')).quantization_config.bnb_4bit_quant_type).toBe('fp4');
    nf4.dispose();
    fp4.dispose();
  });

  it('refuses a non-finite bias with NonFiniteTensorError, writing nothing', async () => {
    const target = path.join(directory, 'nan-bias');
    await withoutTensorLeaks(async () => {
      const model = quantizedMlp(7);
      tf.tidy(() => model.fc1.bias!.assign(tf.fill(model.fc1.bias!.shape, Number.NaN)));
      const error = await errorOf(() => saveQuantizedModel(model, target));
      expect(error).toBeInstanceOf(NonFiniteTensorError);
      expect((error as NonFiniteTensorError).tensor).toBe('fc1.bias');
      expect(error.message).toContain(path.join(target, 'model.safetensors'));
      expect(existsSync(target)).toBe(false);
      model.dispose();
    });
  });
});

describe('saveQuantizedPretrained', () => {
  it('refuses a non-finite weight of a layer kept in float (the output head), writing nothing', async () => {
    const target = path.join(directory, 'nan-head');
    await withoutTensorLeaks(async () => {
      const model = new TinyMlp({ seed: 7 });
      tf.tidy(() => model.lm_head.weight.assign(tf.fill(model.lm_head.weight.shape, Number.POSITIVE_INFINITY)));
      const error = await errorOf(() => saveQuantizedPretrained(model, target));
      expect(error).toBeInstanceOf(NonFiniteTensorError);
      expect((error as NonFiniteTensorError).tensor).toBe('lm_head.weight');
      expect(existsSync(target)).toBe(false);
      model.dispose();
    });
  });
});

describe('loadQuantizedModel', () => {
  async function savedCheckpoint(name: string, change?: (entries: Map<string, SafetensorsEntry>) => void, options: Parameters<typeof quantizeModel>[1] = {}): Promise<string> {
    const target = path.join(directory, name);
    const model = quantizedMlp(7, options);
    await saveQuantizedModel(model, target);
    if (change) {
      const entries = quantizedStateDict(model);
      change(entries);
      await writeSafetensorsFile(path.join(target, 'model.safetensors'), entries, { format: 'pt' });
    }
    model.dispose();
    return target;
  }

  it('refuses a non-finite bias with NonFiniteTensorError naming the tensor and directory, and disposes the model it built', async () => {
    const target = await savedCheckpoint('load-nan-bias', (entries) => entries.set('fc1.bias', nanEntry(entries.get('fc1.bias')!)));
    await withoutTensorLeaks(async () => {
      const built: TinyMlp[] = [];
      const error = await errorOf(() => loadQuantizedModel(target, { loadModel: () => built[built.push(new TinyMlp({ seed: 1 })) - 1]! }));
      expect(error).toBeInstanceOf(NonFiniteTensorError);
      expect((error as NonFiniteTensorError).tensor).toBe('fc1.bias');
      expect(error.message).toContain(target);
      expect(error.message).toContain('allowNonFinite');
      expect(built[0]!.fc1.weight.isDisposed).toBe(true);
    });
  });

  it('loads a non-finite float weight with allowNonFinite', async () => {
    const target = await savedCheckpoint('load-nan-head', (entries) => entries.set('lm_head.weight', nanEntry(entries.get('lm_head.weight')!)));
    await withoutTensorLeaks(async () => {
      const loaded = await loadQuantizedModel(target, { loadModel: () => new TinyMlp({ seed: 1 }), allowNonFinite: true });
      expect(Number.isNaN(loaded.model.lm_head.weight.dataSync()[0])).toBe(true);
      loaded.model.dispose();
    });
  });

  it('disposes the model it built when the checkpoint does not fit, and names the tensor and shapes also with strict: false', async () => {
    const target = await savedCheckpoint('load-wrong-size');
    await withoutTensorLeaks(async () => {
      for (const strict of [true, false]) {
        const error = await errorOf(() => loadQuantizedModel(target, { strict, loadModel: () => new TinyMlp({ hidden: 48 }) }));
        expect(error).toBeInstanceOf(CheckpointError);
        expect(error.message).toContain(`The 4-bit checkpoint in ${target}: the 4-bit weight "fc1.weight" has shape [40, 24] but the layer at "fc1" is [48, 24]`);
        expect(error.message).toContain('also with { strict: false }');
      }
    });
  });

  it('throws a ConfigError saying what to pass when loadModel is missing', async () => {
    const target = await savedCheckpoint('load-no-builder');
    for (const options of [{}, undefined]) {
      const error = await errorOf(() => loadQuantizedModel(target, options as unknown as Parameters<typeof loadQuantizedModel>[1]));
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).field).toBe('loadModel');
      expect(error.message).toMatch(/loadModel: \(config\) => createModel\(config\)/u);
    }
  });

  it('names config.json when its quantization_config is not a 4-bit one', async () => {
    const target = await savedCheckpoint('load-not-4bit');
    const configFile = path.join(target, 'config.json');
    const config = (await readJsonFile(configFile)) as { quantization_config: Record<string, unknown> };
    delete config.quantization_config['load_in_4bit'];
    delete config.quantization_config['_load_in_4bit'];
    await writeJsonAtomic(configFile, config);
    const error = await errorOf(() => loadQuantizedModel(target, { loadModel: () => new TinyMlp() }));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).field).toBe('quantization_config.load_in_4bit');
    expect(error.message).toContain(configFile);
  });

  it.each([
    { label: 'nf4, type missing from quantization_config', options: { type: 'nf4', blockSize: 64, doubleQuant: true }, edit: (q: Record<string, unknown>) => delete q['bnb_4bit_quant_type'] },
    { label: 'fp4 blocks of 128, config claiming nf4 with double quantization', options: { type: 'fp4', blockSize: 128, doubleQuant: false }, edit: (q: Record<string, unknown>) => Object.assign(q, { bnb_4bit_quant_type: 'nf4', bnb_4bit_use_double_quant: true }) },
  ] as const)('reports the type and block size the tensors carry ($label)', async ({ label, options, edit }) => {
    const target = await savedCheckpoint(`load-derived-${label.length}`, undefined, options);
    const configFile = path.join(target, 'config.json');
    const config = (await readJsonFile(configFile)) as { quantization_config: Record<string, unknown> };
    edit(config.quantization_config);
    await writeJsonAtomic(configFile, config);
    await withoutTensorLeaks(async () => {
      const loaded = await loadQuantizedModel(target, { loadModel: () => new TinyMlp(), merge: 'dequantize' });
      expect(loaded.quantConfig).toMatchObject({ type: options.type, blockSize: options.blockSize, doubleQuant: options.doubleQuant, merge: 'dequantize' });
      expect((loaded.model.fc1 as unknown as QuantLinear).quantState).toMatchObject({ quantType: options.type, blockSize: options.blockSize });
      loaded.model.dispose();
    });
  });

  it('refuses a checkpoint mixing quantization types, pointing to loadQuantizedStateDict, and disposes the model', async () => {
    const target = path.join(directory, 'load-mixed');
    const nf4 = quantizedMlp(7);
    const fp4 = quantizedMlp(7, { type: 'fp4' });
    await saveQuantizedModel(nf4, target);
    const entries = quantizedStateDict(nf4);
    for (const key of [...entries.keys()]) if (key.startsWith('proj.')) entries.delete(key);
    for (const [key, entry] of quantizedStateDict(fp4)) if (key.startsWith('proj.')) entries.set(key, entry);
    await writeSafetensorsFile(path.join(target, 'model.safetensors'), entries, { format: 'pt' });
    nf4.dispose();
    fp4.dispose();
    await withoutTensorLeaks(async () => {
      const error = await errorOf(() => loadQuantizedModel(target, { loadModel: () => new TinyMlp() }));
      expect(error).toBeInstanceOf(CheckpointError);
      expect(error.message).toMatch(/mixes 4-bit settings: "proj" is fp4.* but "fc1" is nf4.*loadQuantizedStateDict\(\)/u);
    });
  });
});

describe('loadQuantizedStateDict', () => {
  it('refuses a non-finite float weight, leaving the model unchanged, unless allowNonFinite', async () => {
    await withoutTensorLeaks(() => {
      const model = quantizedMlp(7);
      const entries = quantizedStateDict(model);
      model.dispose();
      entries.set('proj.bias', nanEntry(entries.get('proj.bias')!));
      const fresh = new TinyMlp({ seed: 1 });
      expect(() => loadQuantizedStateDict(fresh, entries)).toThrow(NonFiniteTensorError);
      expect(() => loadQuantizedStateDict(fresh, entries)).toThrow(/The 4-bit checkpoint: tensor "proj\.bias" holds 40 non-finite values/u);
      expect(fresh.fc1).not.toBeInstanceOf(QuantLinear);
      loadQuantizedStateDict(fresh, entries, { allowNonFinite: true });
      expect(Number.isNaN((fresh.proj as unknown as QuantLinear).bias!.dataSync()[0])).toBe(true);
      fresh.dispose();
    });
  });

  it('refuses an invalid merge option before changing the model', async () => {
    await withoutTensorLeaks(() => {
      const model = quantizedMlp(7);
      const entries = quantizedStateDict(model);
      model.dispose();
      const fresh = new TinyMlp({ seed: 1 });
      expect(() => loadQuantizedStateDict(fresh, entries, { merge: 'bogus' as 'requantize' })).toThrow(/merge must be 'requantize' or 'dequantize', got "bogus"/u);
      expect(fresh.fc1).not.toBeInstanceOf(QuantLinear);
      fresh.dispose();
    });
  });
});
