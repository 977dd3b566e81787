import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  AdapterModel,
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
