import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, CheckpointError, ConfigError, createLoraRegistry, initRuntime, Linear, lora, LoraError, type BaseLayer, type Module, type SafetensorsEntry } from '@lora/core';
import { setFaultInjector } from '@lora/core/internal';
import { NonFloatBaseLayer, runUntilKilled } from '@lora/core/testing';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createModel, loadPretrained, loadStateDict, savePretrained, stateDict, type Gpt2LMHeadModel } from '../src/index.js';
import { fixture, ids } from './helpers.js';

const GPT2 = fixture('models/gpt2');
let scratch: string;
let counter = 0;

function fresh(name: string): string {
  counter += 1;
  return path.join(scratch, `${name}-${counter}`);
}

async function caught(promise: Promise<unknown> | (() => unknown)): Promise<unknown> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (error) {
    return error;
  }
  throw new Error('expected a rejection');
}

/** A GPT-2 checkpoint directory: the fixture's weights beside the given config. */
async function withConfig(config: Record<string, unknown>): Promise<string> {
  const directory = fresh('config');
  await mkdir(directory, { recursive: true });
  await writeFile(path.join(directory, 'model.safetensors'), await readFile(path.join(GPT2, 'model.safetensors')));
  await writeFile(path.join(directory, 'config.json'), JSON.stringify(config));
  return directory;
}

const SMALL = { architectures: ['GPT2LMHeadModel'], vocab_size: 40, n_embd: 16, n_head: 2, n_layer: 2, n_positions: 16 };

function small(seed: number, epsilon: number): Gpt2LMHeadModel {
  const model = createModel({ ...SMALL, layer_norm_epsilon: epsilon }, { seed }) as Gpt2LMHeadModel;
  // Sharper weights so that the epsilon (the config) visibly changes the logits.
  for (const [name, variable] of model.namedParameters()) if (name.endsWith('ln_f.weight') || name.endsWith('ln_1.weight')) tf.tidy(() => variable.assign(tf.mul(variable, seed + 2)));
  model.eval();
  return model;
}

function logitsOf(model: Gpt2LMHeadModel): number[] {
  return tf.tidy(() => Array.from(model.forward(ids([[1, 5, 9, 3]])).dataSync()));
}

async function shardFiles(directory: string): Promise<string[]> {
  return (await readdir(directory)).filter((file) => file.startsWith('model-')).sort();
}

async function loadedLogits(directory: string): Promise<number[] | LoraError> {
  try {
    const model = (await loadPretrained(directory)) as Gpt2LMHeadModel;
    try {
      return logitsOf(model);
    } finally {
      model.dispose();
    }
  } catch (error) {
    if (error instanceof LoraError) return error;
    throw error;
  }
}

beforeAll(async () => {
  await initRuntime();
  scratch = await mkdtemp(path.join(tmpdir(), 'lora-models-safety-'));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('loadPretrained', () => {
  it('refuses a config of another architecture before building it when the weights are GPT-2', async () => {
    const directory = await withConfig({ model_type: 'llama' }); // would be a default 6.7B Llama
    const before = tf.memory().numTensors;
    const error = await caught(loadPretrained(directory));
    expect(error).toBeInstanceOf(CheckpointError);
    expect((error as Error).message).toContain(path.join(directory, 'config.json'));
    expect((error as Error).message).toMatch(/describes a LlamaForCausalLM, but the checkpoint .* has no model\.embed_tokens\.weight \(it holds transformer\./u);
    const forced = await caught(loadPretrained(GPT2, { architecture: 'LlamaForCausalLM' }));
    expect(forced).toBeInstanceOf(CheckpointError);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('names the config field whose value disagrees with a tensor shape, and a likely typo', async () => {
    const base = JSON.parse(await readFile(path.join(GPT2, 'config.json'), 'utf8')) as Record<string, unknown>;
    const { n_embd: _dropped, ...withoutEmbd } = base;
    const directory = await withConfig({ ...withoutEmbd, n_embed: 64 }); // n_embd falls back to 768
    const before = tf.memory().numTensors;
    const error = (await caught(loadPretrained(directory))) as CheckpointError;
    expect(error).toBeInstanceOf(CheckpointError);
    expect(error.message).toMatch(/n_embd is 768 \(the default\) but transformer\.wte\.weight is \[257, 64\] \(transformer\.wte\.weight \(expected \[257, 768\], found \[257, 64\]\)\)/u);
    expect(error.message).toMatch(/has n_embed: did you mean n_embd\?/u);
    expect(error.mismatched).toEqual([{ name: 'transformer.wte.weight', expected: [257, 768], received: [257, 64] }]);
    const vocab = (await caught(loadPretrained(await withConfig({ ...base, vocab_size: 50257 })))) as CheckpointError;
    expect(vocab.message).toMatch(/vocab_size is 50257/u);
    const layers = (await caught(loadPretrained(await withConfig({ ...base, n_layer: 1000 })))) as ConfigError;
    expect(layers).toBeInstanceOf(ConfigError);
    expect(layers.field).toBe('n_layer');
    expect(layers.message).toMatch(/at most the 2 layers the checkpoint/u);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('says what a model directory must hold when the path is missing, a file, or lacks config.json', async () => {
    const missing = (await caught(loadPretrained(path.join(scratch, 'nowhere')))) as Error;
    expect(missing).toBeInstanceOf(CheckpointError);
    expect(missing.message).toMatch(/nowhere does not exist; expected a model directory holding config\.json and model\.safetensors/u);
    const file = (await caught(loadPretrained(path.join(GPT2, 'config.json')))) as Error;
    expect(file).toBeInstanceOf(CheckpointError);
    expect(file.message).toMatch(/config\.json is a file; expected a model directory .*Pass the directory that holds it/u);
    const noConfig = fresh('no-config');
    await mkdir(noConfig);
    expect(((await caught(loadPretrained(noConfig))) as Error).message).toMatch(/has no config\.json; expected a model directory/u);
  });

  it('names model_type and an unknown architecture option', async () => {
    const error = (await caught(loadPretrained(await withConfig({ model_type: 'mistral' })))) as ConfigError;
    expect(error.field).toBe('model_type');
    expect(error.message).toMatch(/model_type must be gpt2, llama or bert .*got "mistral"/u);
    const option = (await caught(loadPretrained(GPT2, { architecture: 'Foo' as never }))) as ConfigError;
    expect(option.field).toBe('architecture');
    expect(() => createModel(SMALL, { architecture: 'Foo' as never })).toThrow(/architecture must be one of GPT2LMHeadModel/u);
  });

  it('names the index and the shard when a listed shard is gone', async () => {
    const model = small(1, 1e-5);
    const directory = fresh('deleted-shard');
    await savePretrained(model, directory, { maxShardBytes: 12000 });
    model.dispose();
    expect(await shardFiles(directory)).toEqual(['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
    await rm(path.join(directory, 'model-00002-of-00003.safetensors'));
    const error = (await caught(loadPretrained(directory))) as Error;
    expect(error).toBeInstanceOf(CheckpointError);
    expect(error.message).toMatch(/model\.safetensors\.index\.json lists the shard model-00002-of-00003\.safetensors .*does not exist/u);
  });
});

describe('savePretrained', () => {
  it('refuses bad options before writing anything', async () => {
    const model = small(1, 1e-5);
    for (const maxShardBytes of [0, -1, Number.NaN, 1.5]) {
      const directory = fresh('bad-shard');
      const error = (await caught(savePretrained(model, directory, { maxShardBytes }))) as ConfigError;
      expect(error).toBeInstanceOf(ConfigError);
      expect(error.field).toBe('maxShardBytes');
      await expect(readdir(directory)).rejects.toThrow();
    }
    const directory = fresh('bad-metadata');
    const error = (await caught(savePretrained(model, directory, { metadata: { step: 5 } as never }))) as ConfigError;
    expect(error).toBeInstanceOf(ConfigError);
    expect(error.field).toBe('metadata.step');
    await expect(readdir(directory)).rejects.toThrow();
    const onFile = (await caught(savePretrained(model, path.join(GPT2, 'config.json')))) as Error;
    expect(onFile).toBeInstanceOf(CheckpointError);
    expect(onFile.message).toMatch(/is a file, not a directory/u);
    const belowFile = (await caught(savePretrained(model, path.join(GPT2, 'config.json', 'below')))) as Error;
    expect(belowFile).toBeInstanceOf(CheckpointError);
    expect(belowFile.message).toMatch(/cannot create the directory .*ENOTDIR/u);
    model.dispose();
  });

  it('refuses a layer whose weight is not a float parameter (a 4-bit one), and dequantize-merging keeps the tied head tied', async () => {
    const model = await loadPretrained(GPT2);
    const path0 = 'transformer.h.0.mlp.c_fc';
    const original = model.getSubmodule(path0) as Module & BaseLayer;
    // A stand-in for a 4-bit layer (its weight outside its parameters), giving back GPT-2's Conv1D layout as one does.
    model.setSubmodule(path0, new NonFloatBaseLayer(original, { fanInFanOut: true }));
    original.dispose();
    const directory = fresh('codes-only');
    const error = (await caught(savePretrained(model, directory))) as Error;
    expect(error).toBeInstanceOf(LoraError);
    expect(error.message).toMatch(new RegExp(`^\\[@lora/models\\] savePretrained: ${path0.replace(/\./gu, '\\.')} is a NonFloatBaseLayer, whose weight is not a float parameter and would not be written; nothing was written`, 'u'));
    await expect(readdir(directory)).rejects.toThrow();
    // mergeAndUnload({ dequantize }) turns that layer into a float Linear and leaves the tied output head (a float layer that is not a Linear) alone.
    const peft = AdapterModel.create(model, { registry: createLoraRegistry({ plugins: [lora({ seed: 1 })] }), config: { r: 2, targetModules: ['c_attn'] } });
    const merged = peft.mergeAndUnload({ dequantize: true }) as Gpt2LMHeadModel;
    expect(merged.getSubmodule(path0)).toBeInstanceOf(Linear);
    expect(merged.lm_head.getOwnParameter('weight')).toBe(merged.transformer.wte.weight);
    expect(merged.transformer.wte.weight.isDisposed).toBe(false);
    await savePretrained(merged, directory);
    const loaded = await loadPretrained(directory);
    const input = ids([[1, 2, 3]]);
    const [expected, actual] = [merged.forward(input), loaded.forward(input)];
    expect(Array.from(actual.dataSync())).toEqual(Array.from(expected.dataSync()));
    tf.dispose([input, expected, actual]);
    merged.dispose();
    loaded.dispose();
  });

  it("does not delete a checkpoint of the other layout unless overwrite, and then only that checkpoint's files", async () => {
    const model = small(1, 1e-5);
    // A user's sharded checkpoint and a file of theirs beside it.
    const directory = fresh('other-layout');
    await savePretrained(model, directory, { maxShardBytes: 12000 });
    await writeFile(path.join(directory, 'notes.txt'), 'mine');
    const before = (await readdir(directory)).sort();
    const refused = (await caught(savePretrained(model, directory))) as Error;
    expect(refused).toBeInstanceOf(CheckpointError);
    expect(refused.message).toMatch(/already holds a sharded checkpoint \(model\.safetensors\.index\.json\).*overwrite: true/u);
    expect((await readdir(directory)).sort()).toEqual(before);
    await savePretrained(model, directory, { overwrite: true });
    expect((await readdir(directory)).sort()).toEqual(['config.json', 'model.safetensors', 'notes.txt']);
    // And back: a sharded save over a single file.
    const refusedSharded = (await caught(savePretrained(model, directory, { maxShardBytes: 12000 }))) as Error;
    expect(refusedSharded.message).toMatch(/already holds a single-file checkpoint \(model\.safetensors\)/u);
    expect((await readdir(directory)).sort()).toEqual(['config.json', 'model.safetensors', 'notes.txt']);
    await savePretrained(model, directory, { maxShardBytes: 12000, overwrite: true });
    expect((await readdir(directory)).sort()).toEqual([
      'config.json',
      'model-00001-of-00003.safetensors',
      'model-00002-of-00003.safetensors',
      'model-00003-of-00003.safetensors',
      'model.safetensors.index.json',
      'notes.txt',
    ]);
    // Fewer shards than the last save: the stale ones the old index listed go.
    await savePretrained(model, directory, { maxShardBytes: 20000 });
    expect(await shardFiles(directory)).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    expect(await loadedLogits(directory)).toEqual(logitsOf(model));
    model.dispose();
  });

  // Old model: epsilon 1e-5, seed 1. New: epsilon 1e-1, seed 2 — the same shapes, so only the
  // logits tell a mix (new weights read with the old config, or old shards with new ones) apart.
  const layouts: [string, number | undefined, number | undefined][] = [
    ['single over single', undefined, undefined],
    ['sharded over sharded (other shard count)', 12000, 20000],
    ['sharded over sharded (same shard names)', 12000, 12000],
    ['single over sharded', 12000, undefined],
    ['sharded over single', undefined, 12000],
  ];
  for (const [title, oldShards, newShards] of layouts) {
    it(`leaves the old model, the new one or a clear error when killed at any step: ${title}`, async () => {
      const oldModel = small(1, 1e-5);
      const newModel = small(2, 1e-1);
      const oldLogits = logitsOf(oldModel);
      const newLogits = logitsOf(newModel);
      expect(oldLogits).not.toEqual(newLogits);
      const save = (directory: string) => savePretrained(newModel, directory, { maxShardBytes: newShards, overwrite: true });
      const probe = fresh('count');
      await savePretrained(oldModel, probe, { maxShardBytes: oldShards });
      const { points } = await runUntilKilled(() => save(probe), () => false);
      expect(points.length).toBeGreaterThan(10);
      const outcomes = new Set<string>();
      for (let kill = 0; kill <= points.length; kill++) {
        const directory = fresh('kill');
        await savePretrained(oldModel, directory, { maxShardBytes: oldShards });
        await runUntilKilled(() => save(directory), (_, index) => index === kill);
        const loaded = await loadedLogits(directory);
        if (loaded instanceof LoraError) outcomes.add('error');
        else if (JSON.stringify(loaded) === JSON.stringify(oldLogits)) outcomes.add('old');
        else if (JSON.stringify(loaded) === JSON.stringify(newLogits)) outcomes.add('new');
        else throw new Error(`killed at step ${kill} (${JSON.stringify(points[kill])}): the directory loads as a mix of the old and new model`);
      }
      expect(outcomes.has('old')).toBe(true);
      expect(outcomes.has('new')).toBe(true);
      oldModel.dispose();
      newModel.dispose();
    });
  }
});

describe('savePretrained (failures)', () => {
  const layouts: [string, number | undefined, number | undefined][] = [
    ['single over single', undefined, undefined],
    ['sharded over sharded (other shard count)', 12000, 20000],
    ['single over sharded', 12000, undefined],
    ['sharded over single', undefined, 12000],
  ];
  for (const [title, oldShards, newShards] of layouts) {
    it(`leaves the old model loadable and no new shard behind when a weight file fails to write: ${title}`, async () => {
      const oldModel = small(1, 1e-5);
      const newModel = small(2, 1e-1);
      const oldLogits = logitsOf(oldModel);
      const renames = (await runUntilKilled(async () => savePretrained(newModel, fresh('count'), { maxShardBytes: newShards }), () => false)).points.filter(
        (point) => point.operation === 'rename' && point.path.endsWith('.safetensors'),
      ).length;
      for (let failing = 0; failing < renames; failing++) {
        const directory = fresh('fail');
        await savePretrained(oldModel, directory, { maxShardBytes: oldShards });
        const before = (await readdir(directory)).sort();
        let seen = 0;
        setFaultInjector((point) => {
          if (point.operation === 'rename' && point.path.endsWith('.safetensors') && seen++ === failing) throw Object.assign(new Error('disk full'), { code: 'ENOSPC' });
        });
        try {
          await expect(savePretrained(newModel, directory, { maxShardBytes: newShards, overwrite: true })).rejects.toThrow('disk full');
        } finally {
          setFaultInjector(null);
        }
        expect(await loadedLogits(directory)).toEqual(oldLogits);
        expect((await readdir(directory)).sort()).toEqual(before);
      }
      oldModel.dispose();
      newModel.dispose();
    });
  }
});

describe('loadStateDict', () => {
  it('leaves the model unchanged when a later tensor cannot be decoded', async () => {
    const model = small(1, 1e-5);
    const before = logitsOf(model);
    const other = small(3, 1e-5);
    const tensors = new Map<string, SafetensorsEntry>(stateDict(other));
    other.dispose();
    const data = new Uint8Array(16 * 8);
    const view = new DataView(data.buffer);
    for (let i = 0; i < 16; i++) view.setBigInt64(i * 8, i === 15 ? 2n ** 40n : 1n, true);
    tensors.set('transformer.ln_f.bias', { dtype: 'I64', shape: [16], data }); // the last parameter assigned
    const count = tf.memory().numTensors;
    expect(() => loadStateDict(model, tensors)).toThrow(LoraError);
    expect(tf.memory().numTensors).toBe(count);
    expect(logitsOf(model)).toEqual(before);
    model.dispose();
  });
});
