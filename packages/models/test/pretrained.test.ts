import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError, ConfigError, float32Entry, initRuntime, NonFiniteTensorError, readSafetensorsFile, writeSafetensorsFile, type SafetensorsEntry } from '@lora/core';
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Gpt2LMHeadModel, createModel, loadCausalLanguageModel, loadPretrained, savePretrained, type LlamaForCausalLM, type LoadReport } from '../src/index.js';
import { fixture, ids, withoutLeaks } from './helpers.js';

const GPT2 = fixture('models/gpt2');
let scratch: string;

async function variant(name: string, config: Record<string, unknown> | null, edit?: (tensors: Map<string, SafetensorsEntry>) => void): Promise<string> {
  const directory = path.join(scratch, name);
  const original = await readSafetensorsFile(path.join(GPT2, 'model.safetensors'));
  const tensors = new Map(original.tensors);
  edit?.(tensors);
  await writeSafetensorsFile(path.join(directory, 'model.safetensors'), tensors);
  const baseConfig = JSON.parse(await readFile(path.join(GPT2, 'config.json'), 'utf8')) as Record<string, unknown>;
  await writeFile(path.join(directory, 'config.json'), JSON.stringify(config ?? baseConfig));
  return directory;
}

async function caught(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

function logitsOf(model: Gpt2LMHeadModel): Float32Array {
  return tf.tidy(() => model.forward(ids([[48, 212, 39, 54, 205, 117, 153]])).dataSync() as Float32Array);
}

describe('loadPretrained', () => {
  beforeAll(async () => {
    await initRuntime();
    scratch = await mkdtemp(path.join(tmpdir(), 'lora-models-pretrained-'));
  });

  afterAll(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  it('picks the architecture from config.architectures and reports the tied lm_head as not missing', async () => {
    let report: LoadReport | undefined;
    const model = await loadPretrained(GPT2, { onReport: (r) => (report = r) });
    expect(model).toBeInstanceOf(Gpt2LMHeadModel);
    expect(model.training).toBe(false);
    expect(report!.missing).toEqual([]);
    expect(report!.unexpected).toEqual([]);
    expect(report!.dtypes).toEqual({ F32: 28 });
    model.dispose();
  });

  it('fails naming the tensor when one is missing', async () => {
    const directory = await variant('missing', null, (tensors) => tensors.delete('transformer.h.1.mlp.c_fc.weight'));
    const error = await caught(loadPretrained(directory));
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as CheckpointError).missing).toEqual(['transformer.h.1.mlp.c_fc.weight']);
    expect((error as Error).message).toMatch(/missing: transformer\.h\.1\.mlp\.c_fc\.weight/u);
  });

  it('fails naming the tensor and both shapes when one has the wrong shape', async () => {
    const directory = await variant('shape', null, (tensors) => {
      const entry = tensors.get('transformer.wpe.weight')!;
      tensors.set('transformer.wpe.weight', { dtype: 'F32', shape: [32, 64], data: entry.data.slice(0, 32 * 64 * 4) });
    });
    const error = await caught(loadPretrained(directory));
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as CheckpointError).mismatched).toEqual([{ name: 'transformer.wpe.weight', expected: [64, 64], received: [32, 64] }]);
    expect((error as Error).message).toMatch(/transformer\.wpe\.weight \(expected \[64, 64\], found \[32, 64\]\)/u);
  });

  it('fails naming unexpected tensors, unless strict is off', async () => {
    const directory = await variant('unexpected', null, (tensors) => {
      tensors.set('transformer.extra.weight', tensors.get('transformer.ln_f.weight')!);
      tensors.set('transformer.h.0.attn.bias', tensors.get('transformer.ln_f.weight')!); // an old causal-mask buffer: ignored
    });
    const error = await caught(loadPretrained(directory));
    expect((error as CheckpointError).unexpected).toEqual(['transformer.extra.weight']);
    let report: LoadReport | undefined;
    const model = await loadPretrained(directory, { strict: false, onReport: (r) => (report = r) });
    expect(report!.unexpected).toEqual(['transformer.extra.weight']);
    expect(report!.ignored).toEqual(['transformer.h.0.attn.bias']);
    model.dispose();
  });

  it('accepts LayerNorm gamma/beta names of old converted checkpoints', async () => {
    const directory = await variant('gamma-beta', null, (tensors) => {
      tensors.set('transformer.ln_f.gamma', float32Entry(new Float32Array(64).fill(2), [64]));
      tensors.set('transformer.ln_f.beta', tensors.get('transformer.ln_f.bias')!);
      tensors.delete('transformer.ln_f.weight');
      tensors.delete('transformer.ln_f.bias');
    });
    const model = await loadPretrained(directory);
    expect(model.getSubmodule('transformer.ln_f').getOwnParameter('weight')!.dataSync()[0]).toBe(2);
    model.dispose();
  });

  it('fails naming the field for an unknown architecture or a bad config value', async () => {
    const base = JSON.parse(await readFile(path.join(GPT2, 'config.json'), 'utf8')) as Record<string, unknown>;
    const unknown = await variant('unknown', { ...base, architectures: ['MambaForCausalLM'] });
    const error = await caught(loadPretrained(unknown));
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).field).toBe('architectures');
    expect((error as Error).message).toMatch(/MambaForCausalLM/u);
    const badHeads = await variant('heads', { ...base, n_head: 5 });
    const headError = await caught(loadPretrained(badHeads));
    expect((headError as ConfigError).field).toBe('n_head');
    const badActivation = await variant('activation', { ...base, activation_function: 'mish' });
    // Refused while the config is read: the file is named and no layer (tensor) is built first.
    const before = tf.memory().numTensors;
    const activationError = (await caught(loadPretrained(badActivation))) as ConfigError;
    expect(activationError.field).toBe('activation_function');
    expect(activationError.message).toContain(path.join(badActivation, 'config.json'));
    expect(activationError.message).toMatch(/activation_function must be one of gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish, tanh/u);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('loadCausalLanguageModel accepts decoders and rejects BERT naming architectures', async () => {
    const decoder = await loadCausalLanguageModel(GPT2);
    expect(decoder.numLayers).toBe(2);
    decoder.dispose();
    const error = await caught(loadCausalLanguageModel(fixture('models/bert')));
    expect((error as ConfigError).field).toBe('architectures');
  });

  it('fails naming the file when the weights are absent', async () => {
    const directory = path.join(scratch, 'empty');
    await variant('empty', null);
    await rm(path.join(directory, 'model.safetensors'));
    const error = await caught(loadPretrained(directory));
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as Error).message).toMatch(/model\.safetensors/u);
  });

  it('upcasts F16 and BF16 checkpoints to float32', async () => {
    const toHalf = (value: number): number => {
      // float32 → IEEE half, round to nearest even (normal range only; the fixture's weights are small).
      const f = new Float32Array([value]);
      const bits = new Uint32Array(f.buffer)[0]!;
      const sign = (bits >>> 16) & 0x8000;
      const exponent = ((bits >>> 23) & 0xff) - 127 + 15;
      const mantissa = bits & 0x7fffff;
      if (exponent <= 0) return sign; // flush tiny values to zero
      let half = sign | (exponent << 10) | (mantissa >> 13);
      const rest = mantissa & 0x1fff;
      if (rest > 0x1000 || (rest === 0x1000 && (half & 1) === 1)) half += 1;
      return half;
    };
    const convert = (dtype: 'F16' | 'BF16') => (tensors: Map<string, SafetensorsEntry>) => {
      for (const [name, entry] of tensors) {
        const values = new Float32Array(entry.data.buffer.slice(entry.data.byteOffset, entry.data.byteOffset + entry.data.byteLength));
        const out = new Uint16Array(values.length);
        const bits = new Uint32Array(values.buffer);
        for (let i = 0; i < values.length; i++) out[i] = dtype === 'BF16' ? bits[i]! >>> 16 : toHalf(values[i]!);
        tensors.set(name, { dtype, shape: entry.shape, data: new Uint8Array(out.buffer) });
      }
    };
    const reference = (await loadPretrained(GPT2)) as Gpt2LMHeadModel;
    const expected = logitsOf(reference);
    for (const dtype of ['F16', 'BF16'] as const) {
      let report: LoadReport | undefined;
      const model = (await loadPretrained(await variant(dtype, null, convert(dtype)), { onReport: (r) => (report = r) })) as Gpt2LMHeadModel;
      expect(report!.dtypes).toEqual({ [dtype]: 28 });
      expect(model.transformer.wte.weight.dtype).toBe('float32');
      if (dtype === 'BF16') {
        // BF16 is the top half of a float32: the loaded value is the original with its low 16 bits cleared.
        const original = new Uint32Array(reference.transformer.wte.weight.dataSync().slice().buffer);
        const loaded = new Uint32Array(model.transformer.wte.weight.dataSync().slice().buffer);
        expect(loaded.every((bits, i) => bits === (original[i]! & 0xffff0000) >>> 0)).toBe(true);
      }
      const actual = logitsOf(model);
      const scale = Math.max(...expected.map(Math.abs));
      const worst = Math.max(...actual.map((v, i) => Math.abs(v - expected[i]!)));
      expect(worst / scale).toBeLessThan(dtype === 'F16' ? 5e-3 : 3e-2);
      model.dispose();
    }
    reference.dispose();
  });
});

describe('savePretrained', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('round-trips a GPT-2 through the Hugging Face layout, leaving out the tied lm_head', async () => {
    const directory = path.join(scratch, 'saved-gpt2');
    const model = (await loadPretrained(GPT2)) as Gpt2LMHeadModel;
    await savePretrained(model, directory);
    const saved = await readSafetensorsFile(path.join(directory, 'model.safetensors'));
    const original = await readSafetensorsFile(path.join(GPT2, 'model.safetensors'));
    expect([...saved.tensors.keys()].sort()).toEqual([...original.tensors.keys()].sort());
    expect(saved.metadata).toEqual({ format: 'pt' });
    const config = JSON.parse(await readFile(path.join(directory, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config['architectures']).toEqual(['GPT2LMHeadModel']);
    expect(config['summary_type']).toBe('cls_index'); // unknown keys survive
    const reloaded = (await loadPretrained(directory)) as Gpt2LMHeadModel;
    expect(Array.from(logitsOf(reloaded))).toEqual(Array.from(logitsOf(model)));
    await withoutLeaks(() => logitsOf(reloaded));
    model.dispose();
    reloaded.dispose();
  });

  it('never saves a non-finite weight, even one loaded with allowNonFinite: nothing is written', async () => {
    const source = await variant('nan-weights', null, (tensors) => {
      const [name, entry] = [...tensors].find(([key]) => key.endsWith('mlp.c_fc.weight'))!;
      const values = new Float32Array(entry.data.slice().buffer);
      values[3] = Number.NEGATIVE_INFINITY;
      tensors.set(name, { ...entry, data: new Uint8Array(values.buffer) });
    });
    const model = await loadPretrained(source, { allowNonFinite: true });
    const directory = path.join(scratch, 'nan-saved');
    const error = await caught(savePretrained(model, directory));
    expect(error).toBeInstanceOf(NonFiniteTensorError);
    expect((error as Error).message).toMatch(/Not writing .*nan-saved.model\.safetensors: tensor ".*mlp\.c_fc\.weight" holds 1 non-finite value \(first: -Infinity\); nothing was written/u);
    expect(await readdir(directory).catch(() => [])).toEqual([]);
    model.dispose();
  });

  it('saves a bare GPT2Model without the transformer. prefix and loads it back into GPT2LMHeadModel', async () => {
    const directory = path.join(scratch, 'saved-trunk');
    const trunk = await loadPretrained(GPT2, { architecture: 'GPT2Model' });
    await savePretrained(trunk, directory);
    const saved = await readSafetensorsFile(path.join(directory, 'model.safetensors'));
    expect(saved.tensors.has('h.0.attn.c_attn.weight')).toBe(true);
    let report: LoadReport | undefined;
    const full = await loadPretrained(directory, { architecture: 'GPT2LMHeadModel', onReport: (r) => (report = r) });
    expect(report!.prefixChange).toBe('+transformer');
    const reference = (await loadPretrained(GPT2)) as Gpt2LMHeadModel;
    expect(Array.from(logitsOf(full))).toEqual(Array.from(logitsOf(reference)));
    trunk.dispose();
    full.dispose();
    reference.dispose();
  });

  it('writes and reads a sharded checkpoint with model.safetensors.index.json', async () => {
    const directory = path.join(scratch, 'sharded-llama');
    const model = createModel(
      { architectures: ['LlamaForCausalLM'], vocab_size: 40, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 },
      { seed: 3 },
    ) as LlamaForCausalLM;
    model.eval();
    await savePretrained(model, directory, { maxShardBytes: 4096 });
    const files = (await readdir(directory)).sort();
    expect(files).toContain('model.safetensors.index.json');
    expect(files).not.toContain('model.safetensors');
    expect(files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/u.test(f)).length).toBeGreaterThan(2);
    const reloaded = (await loadPretrained(directory)) as LlamaForCausalLM;
    const input = ids([[1, 2, 3, 4]]);
    const a = tf.tidy(() => model.forward(input).dataSync());
    const b = tf.tidy(() => reloaded.forward(input).dataSync());
    expect(Array.from(b)).toEqual(Array.from(a));
    // A shard that lacks a tensor its index lists is reported by name.
    const index = JSON.parse(await readFile(path.join(directory, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    index.weight_map['model.norm.weight'] = index.weight_map['lm_head.weight']!;
    const broken = path.join(scratch, 'sharded-broken');
    await mkdir(broken, { recursive: true });
    for (const file of files) await copyFile(path.join(directory, file), path.join(broken, file));
    await writeFile(path.join(broken, 'model.safetensors.index.json'), JSON.stringify(index));
    const error = await caught(loadPretrained(broken));
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as Error).message).toMatch(/model\.norm\.weight/u);
    tf.dispose(input);
    model.dispose();
    reloaded.dispose();
  });
});
