import * as tf from '@tensorflow/tfjs-core';
import {
  AdapterModel,
  CheckpointError,
  ConfigError,
  createLoraRegistry,
  initRuntime,
  lora,
  readJsonFile,
  readSafetensorsFile,
  type SafetensorsEntry,
} from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { mkdtemp, rm } from 'node:fs/promises';
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
