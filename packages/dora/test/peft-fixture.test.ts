import * as tf from '@tensorflow/tfjs-core';
import {
  AdapterModel,
  createLoraRegistry,
  entryToFloat32,
  initRuntime,
  loadAdapterModel,
  lora,
  readSafetensorsFile,
  saveAdapter,
  type AdapterLayer,
  type Linear,
} from '@lora/core';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectSameAdapterFiles } from '@lora/core/testing';
import { dora, DoraAdapter, type DoraConfig } from '../src/index.js';
import { FIXTURES, linearTreeFromCheckpoint, maxAbsoluteError, ulp32 } from './helpers.js';

const DIRECTORY = path.join(FIXTURES, 'adapters/gpt2_dora');
const MERGED_KEY = 'transformer.h.0.attn.c_attn';
const registry = createLoraRegistry({ plugins: [lora(), dora()] });

interface Reference {
  adapter_safetensors_keys: Record<string, number[]>;
}
const reference = JSON.parse(readFileSync(path.join(DIRECTORY, 'reference.json'), 'utf8')) as Reference;

const gpt2Tree = () =>
  linearTreeFromCheckpoint(path.join(FIXTURES, 'models/gpt2/model.safetensors'), { isLinear: (p) => p.includes('.h.'), fanInFanOut: () => true });

async function readJson(file: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
}

describe('the PEFT-saved DoRA adapter (fixtures/reference/adapters/gpt2_dora) on a Linear tree', () => {
  let output: string;
  beforeAll(async () => {
    await initRuntime();
    output = await mkdtemp(path.join(tmpdir(), 'lora-dora-fixture-'));
  });
  afterAll(async () => {
    await rm(output, { recursive: true, force: true });
  });

  it('is read by dora() (LORA + use_dora) and loads every tensor, the magnitude read from the file', async () => {
    const adapterModel = await loadAdapterModel(await gpt2Tree(), DIRECTORY, { registry });
    expect(adapterModel.adapterConfig('default').plugin.name).toBe('dora');
    const config = adapterModel.adapterConfig('default').config as DoraConfig;
    expect([config.r, config.loraAlpha, config.useDora, config.fanInFanOut, config.inferenceMode]).toEqual([4, 8, true, true, true]);
    const saved = await readSafetensorsFile(path.join(DIRECTORY, 'adapter_model.safetensors'));
    const instances = adapterModel.adapterInstances('default');
    expect(instances.map(([p]) => p)).toEqual(['transformer.h.0.attn.c_attn', 'transformer.h.1.attn.c_attn']);
    let checked = 0;
    for (const [modulePath, instance] of instances) {
      expect(instance).toBeInstanceOf(DoraAdapter);
      for (const [key, variable] of instance.namedTensors()) {
        const name = `base_model.model.${modulePath}.${key}`;
        expect(variable.shape).toEqual(reference.adapter_safetensors_keys[name]);
        expect(Array.from(variable.dataSync())).toEqual(Array.from(entryToFloat32(saved.tensors.get(name)!)));
        checked += 1;
      }
      // The saved m is not ‖W‖ (the fixture perturbed it): reading, not recomputing, matters.
      const layer = adapterModel.model.getSubmodule(modulePath) as AdapterLayer;
      const norms = tf.tidy(() => tf.sqrt(tf.sum(tf.square(layer.base_layer.denseWeight()), 1)));
      expect(maxAbsoluteError((instance as DoraAdapter).magnitude.dataSync(), norms.dataSync())).toBeGreaterThan(1e-2);
      norms.dispose();
    }
    expect(checked).toBe(6);
    adapterModel.dispose();
  });

  it("merges to PEFT's merged_weight.safetensors and unmerges back to W within 3 ulp", async () => {
    const adapterModel = await loadAdapterModel(await gpt2Tree(), DIRECTORY, { registry });
    const layer = adapterModel.model.getSubmodule(MERGED_KEY) as AdapterLayer;
    const base = layer.base_layer as unknown as Linear;
    const original = Float32Array.from(base.weight.dataSync());
    const mergedFile = await readSafetensorsFile(path.join(DIRECTORY, 'merged_weight.safetensors'));
    const expected = entryToFloat32(mergedFile.tensors.get(`${MERGED_KEY}.weight`)!);
    // Merge keeps one cached norm per layer until unmerge (as PEFT's cache); the pair leaks nothing.
    const before = tf.memory().numTensors;
    adapterModel.merge();
    expect(tf.memory().numTensors).toBe(before + 2);
    const actual = Float32Array.from(base.weight.dataSync()); // Conv1D layout [in, out] = [64, 192], as the file
    const error = maxAbsoluteError(actual, expected);
    const delta = (adapterModel.adapterInstances('default')[0]![1] as DoraAdapter).loraDeltaWeight();
    const deltaValues = delta.dataSync(); // [out, in]
    delta.dispose();
    adapterModel.unmerge();
    expect(tf.memory().numTensors).toBe(before);
    const restored = base.weight.dataSync();
    let worstUlps = 0;
    for (let i = 0; i < 64; i++)
      for (let j = 0; j < 192; j++) {
        const index = i * 192 + j;
        const scale = Math.max(Math.abs(original[index]!), Math.abs(original[index]! + deltaValues[j * 64 + i]!));
        worstUlps = Math.max(worstUlps, Math.abs(restored[index]! - original[index]!) / ulp32(scale));
      }
    console.log(`gpt2_dora merged weight: max abs diff vs PEFT ${error.toExponential(2)}; unmerge restores W within ${worstUlps} ulp`);
    expect(error).toBeLessThan(1e-6);
    expect(worstUlps).toBeLessThanOrEqual(3);
    adapterModel.dispose();
  });

  it('saves again to the same tensor names, shapes and bytes and the same adapter_config.json', async () => {
    const adapterModel = await loadAdapterModel(await gpt2Tree(), DIRECTORY, { registry });
    const target = path.join(output, 'resaved');
    await saveAdapter(adapterModel, target);
    await expectSameAdapterFiles(target, DIRECTORY);
    // Stricter than the shared check: even the list order of the config matches.
    expect(await readJson(path.join(target, 'adapter_config.json'))).toEqual(await readJson(path.join(DIRECTORY, 'adapter_config.json')));
    adapterModel.dispose();
  });

  it("writes a new DoRA adapter with exactly PEFT's key set, shapes and config fields", async () => {
    const adapterModel = AdapterModel.create(await gpt2Tree(), {
      registry,
      plugin: 'dora',
      config: { r: 4, loraAlpha: 8, targetModules: ['c_attn'], fanInFanOut: true, taskType: 'CAUSAL_LM', baseModelNameOrPath: 'models/gpt2' },
    });
    const target = path.join(output, 'fresh');
    await saveAdapter(adapterModel, target);
    const written = await readSafetensorsFile(path.join(target, 'adapter_model.safetensors'));
    const shapes = Object.fromEntries([...written.tensors].map(([key, entry]) => [key, entry.shape]));
    expect(shapes).toEqual(reference.adapter_safetensors_keys);
    const config = await readJson(path.join(target, 'adapter_config.json'));
    const peftConfig = await readJson(path.join(DIRECTORY, 'adapter_config.json'));
    expect(Object.keys(config).sort()).toEqual(Object.keys(peftConfig).sort());
    // Every value matches too, since the options above are the fixture's.
    expect(config).toEqual(peftConfig);
    adapterModel.dispose();
  });
});
