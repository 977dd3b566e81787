import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  AdapterModel,
  CheckpointError,
  ConfigError,
  createLoraRegistry,
  initRuntime,
  loadAdapter,
  loadAdapterModel,
  lora,
  readAdapterConfig,
  readSafetensorsFile,
  saveAdapter,
  train,
} from '@lora/core';
import { maxAbsoluteError, withoutTensorLeaks } from '@lora/core/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hyper, HyperLoraState, pluginPackage, saveHyperLoraAsLora } from '../src/index.js';
import { LANGUAGES, TinyModel, tinyConfig } from './helpers.js';

let directory: string;

beforeAll(async () => {
  await initRuntime();
  directory = await mkdtemp(path.join(tmpdir(), 'hyper-plugin-'));
});

afterAll(async () => {
  await rm(directory, { recursive: true, force: true });
});

const registry = () => createLoraRegistry({ plugins: [lora(), hyper({ seed: 9 })] });
const ROWS = [{ src: 'en', tgt: 'fr' }, { src: 'fr', tgt: 'de' }, { src: 'en', tgt: 'fr' }, { tgt: 'de' }];

function create(config = tinyConfig()): AdapterModel<TinyModel> {
  return AdapterModel.create(new TinyModel(1), { registry: registry(), plugin: 'hyper', config });
}

/** Move the generator away from its exact start so the adapter does something. */
function randomize(peft: AdapterModel<TinyModel>): HyperLoraState {
  const state = peft.adapterState('default');
  if (!(state instanceof HyperLoraState)) throw new Error('the hyper plugin did not create a HyperLoraState');
  let seed = 500;
  for (const [, variable] of state.namedTensors()) tf.tidy(() => variable.assign(tf.add(variable, tf.randomNormal(variable.shape, 0, 0.3, 'float32', seed++))));
  state.invalidate();
  return state;
}

describe('hyper() through AdapterModel', () => {
  it('describes itself in the package descriptor', () => {
    expect(pluginPackage.packageName).toBe('@lora/hyper');
    expect(pluginPackage.plugins.map((plugin) => [plugin.name, plugin.kind, plugin.peftTypes])).toEqual([['hyper', 'adapter', ['HYPERLORA']]]);
    expect(pluginPackage.plugins[0]!.create().name).toBe('hyper');
  });

  it('saves the generator once with the condition vocabulary and loads it to identical logits', async () => {
    await withoutTensorLeaks(async () => {
      const peft = create();
      randomize(peft);
      peft.model.eval();
      const x = tf.randomNormal([4, 3, 6], 0, 1, 'float32', 91);
      const expected = peft.withAdapterInputs({ condition: ROWS }, () => peft.model.forward(x));
      const target = path.join(directory, 'saved');
      await saveAdapter(peft, target);
      const json = await readAdapterConfig(target);
      expect(json.peft_type).toBe('HYPERLORA');
      expect(json['condition']).toEqual(LANGUAGES);
      const file = await readSafetensorsFile(path.join(target, 'adapter_model.safetensors'));
      const keys = [...file.tensors.keys()];
      expect(keys.length).toBe((peft.adapterState('default') as HyperLoraState).namedTensors().length);
      expect(keys.every((key) => key.startsWith('hyperlora.'))).toBe(true);
      const loaded = await loadAdapterModel(new TinyModel(1), target, { registry: registry() });
      loaded.model.eval();
      const actual = loaded.withAdapterInputs({ condition: ROWS }, () => loaded.model.forward(x));
      expect(Array.from(actual.dataSync())).toEqual(Array.from(expected.dataSync()));
      tf.dispose([x, expected, actual]);
      peft.dispose();
      loaded.dispose();
    });
  });

  it('exports a fixed condition to a plain LoRA with the same logits (max abs diff < 1e-5)', async () => {
    await withoutTensorLeaks(async () => {
      const peft = create(tinyConfig({ headMode: 'diag' }));
      randomize(peft);
      peft.model.eval();
      const x = tf.randomNormal([2, 3, 6], 0, 1, 'float32', 92);
      const condition = { src: 'fr', tgt: 'de' };
      const expected = peft.withAdapterInputs({ condition }, () => peft.model.forward(x));
      const target = path.join(directory, 'exported');
      await saveHyperLoraAsLora(peft, target, { condition });
      const plain = new AdapterModel(new TinyModel(1), { registry: createLoraRegistry({ plugins: [lora()] }) });
      await loadAdapter(plain, target);
      plain.model.eval();
      const actual = plain.model.forward(x);
      expect(maxAbsoluteError(actual.dataSync(), expected.dataSync())).toBeLessThan(1e-5);
      tf.dispose([x, expected, actual]);
      peft.dispose();
      plain.dispose();
    });
  });

  it("trains with core's train() on mixed-condition batches, no tensor growth over 50 steps", async () => {
    await withoutTensorLeaks(async () => {
      const peft = create();
      const x = tf.randomNormal([4, 2, 6], 0, 1, 'float32', 93);
      const target = tf.randomNormal([4, 2, 3], 0, 1, 'float32', 94);
      const counts: number[] = [];
      const result = await train({
        model: peft,
        trainData: [{ x, target }],
        steps: 50,
        learningRate: 0.02,
        lossFn: (batch) =>
          peft.withAdapterInputs({ condition: ROWS }, () => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(batch.x), batch.target))) as tf.Scalar)),
        onProgress: () => counts.push(tf.memory().numTensors),
      });
      expect(new Set(counts.slice(1)).size).toBe(1);
      expect(result.losses[result.losses.length - 1]!).toBeLessThan(0.5 * result.losses[0]!);
      tf.dispose([x, target]);
      peft.dispose();
    });
  });
});

describe('hyper() options', () => {
  for (const [options, field, expected] of [
    [{ cacheBytes: '64MB' }, 'cacheBytes', '[hyper] Invalid config: cacheBytes must be a whole number of bytes >= 0 (0 turns the inference cache off), got "64MB". Pass e.g. hyper({ cacheBytes: 64 * 1024 * 1024 }) for 64 MiB.'],
    [{ cacheBytes: -1 }, 'cacheBytes', 'cacheBytes must be a whole number of bytes >= 0'],
    [{ cacheBytes: 1.5 }, 'cacheBytes', 'cacheBytes must be a whole number of bytes >= 0'],
    [{ seed: 'x' }, 'seed', '[hyper] Invalid config: seed must be an integer, got "x". Pass e.g. hyper({ seed: 1 }).'],
    [{ seed: 0.5 }, 'seed', 'seed must be an integer'],
    [{ cachebytes: 0 }, 'cachebytes', '[hyper] Invalid config: cachebytes must be a known option of hyper() (seed, cacheBytes; check the spelling), got 0.'],
    [42, 'options', 'options must be an object { seed?, cacheBytes? }'],
  ] as const) {
    it(`rejects ${JSON.stringify(options)} with a one-line ConfigError naming ${field}`, () => {
      let caught: unknown;
      try {
        hyper(options as never);
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(ConfigError);
      expect((caught as ConfigError).field).toBe(field);
      expect((caught as Error).message).toContain(expected);
      expect((caught as Error).message).not.toContain('\n');
    });
  }

  it('accepts the documented options', () => {
    expect(hyper().name).toBe('hyper');
    expect(hyper({ seed: 3, cacheBytes: 0 }).name).toBe('hyper');
    expect(hyper({ seed: undefined, cacheBytes: 1024 }).name).toBe('hyper');
  });
});

describe('loading a HyperLoRA adapter', () => {
  it('names the file when the saved generator does not fit the model, and leaves the model as it was', async () => {
    await withoutTensorLeaks(async () => {
      const peft = create();
      const target = path.join(directory, 'for-another-model');
      await saveAdapter(peft, target);
      peft.dispose();
      // Another vocabulary: the same targets, a condition table of another size.
      const json = JSON.parse(await readFile(path.join(target, 'adapter_config.json'), 'utf8')) as { condition: { factors: { values: string[] }[] } };
      json.condition.factors[0]!.values.push('es');
      await writeFile(path.join(target, 'adapter_config.json'), JSON.stringify(json));
      const other = new AdapterModel(new TinyModel(1), { registry: registry() });
      let caught: unknown;
      try {
        await loadAdapter(other, target);
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(CheckpointError);
      const message = (caught as Error).message;
      expect(message).toContain(path.join(target, 'adapter_model.safetensors'));
      expect(message).toContain('wrong shape: hyperlora.condition.src.weight (expected [5, 4], found [4, 4])');
      expect(message).not.toContain('\n');
      expect(other.adapterNames).toEqual([]);
      other.dispose();
    });
  });
});

describe('disposing a HyperLoRA model', () => {
  it('frees the generator with model.dispose(), as LoRA frees its factors, and peft.dispose() afterwards is harmless', async () => {
    await withoutTensorLeaks(() => {
      const peft = create();
      const state = peft.adapterState('default') as HyperLoraState;
      peft.model.eval();
      const x = tf.randomNormal([4, 3, 6], 0, 1, 'float32', 95);
      tf.dispose(peft.forward({ condition: ROWS }, x));
      tf.dispose(peft.forward({ condition: ROWS[0] }, x));
      peft.model.dispose();
      expect(state.isDisposed).toBe(true);
      peft.dispose();
      tf.dispose(x);
    });
  });

  it('frees the generator with peft.dispose() and with deleteAdapter', async () => {
    await withoutTensorLeaks(() => {
      const peft = create();
      peft.addAdapter('second', { plugin: 'hyper', config: tinyConfig() });
      const second = peft.adapterState('second') as HyperLoraState;
      peft.deleteAdapter('second');
      expect(second.isDisposed).toBe(true);
      expect((peft.adapterState('default') as HyperLoraState).isDisposed).toBe(false);
      peft.dispose();
    });
  });
});
