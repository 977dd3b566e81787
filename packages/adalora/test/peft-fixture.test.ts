import * as tf from '@tensorflow/tfjs-core';
import {
  createLoraRegistry,
  entryToFloat32,
  initRuntime,
  lora,
  loadAdapterModel,
  readSafetensorsFile,
  saveAdapter,
  type AdapterLayer,
  type AdapterModel,
} from '@lora/core';
import { expectSameAdapterFiles, withoutTensorLeaks } from '@lora/core/testing';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adalora, adaLoraRankPattern, isAdaLoraAdapter, saveAdaLoraAdapter, type AdaLoraConfig } from '../src/index.js';
import { ADALORA_FIXTURE, gpt2LinearTree, maxAbsDifference, readJson } from './helpers.js';

const registry = createLoraRegistry({ plugins: [lora(), adalora()] });
const MERGED_KEY = 'transformer.h.0.attn.c_attn';

interface Reference {
  adapter_safetensors_keys: Record<string, number[]>;
  adalora_notes: { final_rank_per_module: Record<string, number> };
}


describe('PEFT-saved AdaLoRA adapter (gpt2_adalora)', () => {
  let output: string;
  let reference: Reference;
  const load = async (): Promise<AdapterModel> => loadAdapterModel(await gpt2LinearTree(), ADALORA_FIXTURE, { registry });

  beforeAll(async () => {
    await initRuntime();
    output = await mkdtemp(path.join(tmpdir(), 'adalora-fixture-'));
    reference = await readJson<Reference>(path.join(ADALORA_FIXTURE, 'reference.json'));
  });
  afterAll(async () => {
    await rm(output, { recursive: true, force: true });
  });

  it('loads every module at its saved rank, including the rank-0 module stored as zero-size tensors', async () => {
    await withoutTensorLeaks(async () => {
    const adapterModel = await load();
    const saved = await readSafetensorsFile(path.join(ADALORA_FIXTURE, 'adapter_model.safetensors'));
    const instances = adapterModel.adapterInstances('default');
    expect(instances).toHaveLength(6);
    for (const [modulePath, instance] of instances) {
      expect(isAdaLoraAdapter(instance)).toBe(true);
      if (!isAdaLoraAdapter(instance)) continue;
      expect(instance.rank).toBe(reference.adalora_notes.final_rank_per_module[modulePath]);
      // PEFT keeps ranknum = init_r after resizing: scale = 8 / fp32(6 + 1e-5).
      expect(instance.scalingNumerator).toBe(8);
      expect(instance.ranknumPlusEpsilon).toBe(Math.fround(6.00001));
      for (const [key, variable] of instance.namedTensors()) {
        const name = `base_model.model.${modulePath}.${key}`;
        expect(variable.shape).toEqual(reference.adapter_safetensors_keys[name]);
        expect(Array.from(variable.dataSync())).toEqual(Array.from(entryToFloat32(saved.tensors.get(name)!)));
      }
    }
    const rankZero = adapterModel.adapterInstances('default').find(([p]) => p === 'transformer.h.1.attn.c_attn')![1];
    expect(rankZero.namedTensors().map(([key, v]) => [key, v.shape])).toEqual([
      ['lora_A', [0, 64]],
      ['lora_B', [192, 0]],
      ['lora_E', [0, 1]],
    ]);
    expect(adapterModel.trainableParameters().trainable).toBe(0);
    const config = adapterModel.adapterConfig('default').config as AdaLoraConfig;
    expect(config.inferenceMode).toBe(true);
    adapterModel.dispose();
    });
  });

  it("merges to PEFT's merged weight, and the rank-0 module leaves its base weight unchanged", async () => {
    const adapterModel = await load();
    const mergedFile = await readSafetensorsFile(path.join(ADALORA_FIXTURE, 'merged_weight.safetensors'));
    const expected = entryToFloat32(mergedFile.tensors.get(`${MERGED_KEY}.weight`)!);
    const rankZero = adapterModel.model.getSubmodule('transformer.h.1.attn.c_attn') as AdapterLayer;
    const before = rankZero.base_layer.denseWeight();
    await withoutTensorLeaks(() => adapterModel.merge());
    const layer = adapterModel.model.getSubmodule(MERGED_KEY) as AdapterLayer;
    const actual = (layer.base_layer as unknown as { weight: tf.Variable }).weight.dataSync();
    const error = maxAbsDifference(actual, expected);
    console.log(`gpt2_adalora merged weight: max abs error ${error.toExponential(2)}`);
    expect(error).toBeLessThan(1e-6);
    const after = rankZero.base_layer.denseWeight();
    expect(maxAbsDifference(after.dataSync(), before.dataSync())).toBe(0);
    tf.dispose([before, after]);
    adapterModel.unmerge();
    adapterModel.dispose();
  });

  it.each([
    ['saveAdaLoraAdapter', saveAdaLoraAdapter],
    ["core's saveAdapter", saveAdapter],
  ] as const)('saves again (%s) with the same keys, shapes, values and rank_pattern', async (label, save) => {
    await withoutTensorLeaks(async () => {
    const adapterModel = await load();
    const directory = path.join(output, label.replace(/\W+/gu, '-'));
    expect(adaLoraRankPattern(adapterModel)).toEqual((await readJson(path.join(ADALORA_FIXTURE, 'adapter_config.json')))['rank_pattern']);
    await save(adapterModel, directory);
    await expectSameAdapterFiles(directory, ADALORA_FIXTURE);
    // And what was written loads again to the same ranks.
    const reloaded = await loadAdapterModel(await gpt2LinearTree(), directory, { registry });
    for (const [modulePath, instance] of reloaded.adapterInstances('default')) {
      expect(isAdaLoraAdapter(instance) && instance.rank).toBe(reference.adalora_notes.final_rank_per_module[modulePath]);
    }
    reloaded.dispose();
    adapterModel.dispose();
    });
  });
});
