import type * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type {
  AdapterLayer} from '../src/index.js';
import {
  createLoraRegistry,
  entryToFloat32,
  initRuntime,
  lora,
  loadAdapterModel,
  ModulesToSaveWrapper,
  readSafetensorsFile,
  saveAdapter,
  type LoraConfig,
} from '../src/index.js';
import { expectSameAdapterFiles, linearTreeFromCheckpoint, withoutTensorLeaks } from '../src/testing.js';

const FIXTURES = path.resolve(__dirname, '../../../fixtures/reference');
const registry = createLoraRegistry({ plugins: [lora()] });

const gpt2Tree = () =>
  linearTreeFromCheckpoint(path.join(FIXTURES, 'models/gpt2/model.safetensors'), {
    isLinear: (p) => p.includes('.h.'),
    fanInFanOut: () => true,
  });
const bertTree = () =>
  linearTreeFromCheckpoint(path.join(FIXTURES, 'models/bert/model.safetensors'), {
    isLinear: (p) => !p.includes('embeddings'),
    fanInFanOut: () => false,
  });

async function readJson(file: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
}


describe.each([
  { fixture: 'gpt2_lora', tree: gpt2Tree, layers: 6, mergedKey: 'transformer.h.0.attn.c_attn' },
  { fixture: 'bert_lora_cls', tree: bertTree, layers: 4, mergedKey: 'bert.encoder.layer.0.attention.self.query' },
])('PEFT-saved adapter $fixture', ({ fixture, tree, layers, mergedKey }) => {
  const directory = path.join(FIXTURES, 'adapters', fixture);
  let output: string;
  beforeAll(async () => {
    await initRuntime();
    output = await mkdtemp(path.join(tmpdir(), `lora-${fixture}-`));
  });
  afterAll(async () => {
    await rm(output, { recursive: true, force: true });
  });

  it('loads with the right keys, shapes, values and config', async () => {
    const adapterModel = await loadAdapterModel(await tree(), directory, { registry });
    const saved = await readSafetensorsFile(path.join(directory, 'adapter_model.safetensors'));
    const reference = (await readJson(path.join(directory, 'reference.json')))['adapter_safetensors_keys'] as Record<string, number[]>;
    expect(adapterModel.adapterLayers()).toHaveLength(layers);
    let checked = 0;
    for (const [modulePath, instance] of adapterModel.adapterInstances('default')) {
      for (const [key, variable] of instance.namedTensors()) {
        const name = `base_model.model.${modulePath}.${key}`;
        expect(variable.shape).toEqual(reference[name]);
        expect(Array.from(variable.dataSync())).toEqual(Array.from(entryToFloat32(saved.tensors.get(name)!)));
        checked += 1;
      }
    }
    expect(checked).toBe(layers * 2);
    const { config } = adapterModel.adapterConfig('default');
    const loraConfig = config as LoraConfig;
    expect(loraConfig.r).toBe(4);
    expect(loraConfig.loraAlpha).toBe(8);
    expect(loraConfig.inferenceMode).toBe(true);
    expect(adapterModel.trainableParameters().trainable).toBe(0);
    if (fixture === 'bert_lora_cls') {
      const wrapper = adapterModel.model.getSubmodule('classifier');
      expect(wrapper).toBeInstanceOf(ModulesToSaveWrapper);
      const copy = (wrapper as ModulesToSaveWrapper).copy('default')!;
      const [, weight] = copy.namedParameters().find(([n]) => n === 'weight')!;
      expect(Array.from(weight.dataSync())).toEqual(Array.from(entryToFloat32(saved.tensors.get('base_model.model.classifier.weight')!)));
    }
    adapterModel.dispose();
  });

  it("merges to PEFT's merged weight", async () => {
    const adapterModel = await loadAdapterModel(await tree(), directory, { registry });
    const mergedFile = await readSafetensorsFile(path.join(directory, 'merged_weight.safetensors'));
    const expected = entryToFloat32(mergedFile.tensors.get(`${mergedKey}.weight`)!);
    await withoutTensorLeaks(() => adapterModel.merge());
    const layer = adapterModel.model.getSubmodule(mergedKey) as AdapterLayer;
    const actual = (layer.base_layer as unknown as { weight: tf.Variable }).weight.dataSync();
    let worst = 0;
    for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
    expect(worst).toBeLessThan(1e-6);
    adapterModel.dispose();
  });

  it('saves again with the same tensor names, shapes and values and an equivalent adapter_config.json', async () => {
    const adapterModel = await loadAdapterModel(await tree(), directory, { registry });
    await saveAdapter(adapterModel, output);
    await expectSameAdapterFiles(output, directory);
    adapterModel.dispose();
  });
});

describe('lora().fromPeftJson', () => {
  it('keeps lora_bias (PEFT >= 0.14) through a load and save, and refuses lora_bias: true', () => {
    const plugin = lora();
    const json = { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q'], lora_bias: false, exclude_modules: null };
    const again = plugin.toPeftJson(plugin.fromPeftJson(json));
    expect(again['lora_bias']).toBe(false);
    expect(() => plugin.fromPeftJson({ ...json, lora_bias: true })).toThrow(/lora_bias/u);
  });
});

describe('loadAdapter', () => {
  it('names missing and mis-shaped tensors in a CheckpointError and leaves the model as it was', async () => {
    await initRuntime();
    const { mkdtemp: makeTemp, writeFile, copyFile } = await import('node:fs/promises');
    const { serializeSafetensors, CheckpointError, AdapterModel } = await import('../src/index.js');
    const directory = await makeTemp(path.join(tmpdir(), 'lora-bad-adapter-'));
    const source = path.join(FIXTURES, 'adapters/gpt2_lora');
    const file = await readSafetensorsFile(path.join(source, 'adapter_model.safetensors'));
    const tensors = new Map(file.tensors);
    tensors.delete('base_model.model.transformer.h.1.attn.c_proj.lora_B.weight');
    const a = tensors.get('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight')!;
    tensors.set('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight', { ...a, shape: [8, 32] });
    await writeFile(path.join(directory, 'adapter_model.safetensors'), serializeSafetensors(tensors, { format: 'pt' }));
    await copyFile(path.join(source, 'adapter_config.json'), path.join(directory, 'adapter_config.json'));
    const model = await gpt2Tree();
    const pathsBefore = model.namedParameters().map(([name]) => name);
    const adapterModel = new AdapterModel(model, { registry });
    let caught: unknown;
    try {
      const { loadAdapter } = await import('../src/index.js');
      await loadAdapter(adapterModel, directory);
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(CheckpointError);
    const error = caught as InstanceType<typeof CheckpointError>;
    expect(error.missing).toEqual(['base_model.model.transformer.h.1.attn.c_proj.lora_B.weight']);
    expect(error.mismatched.map((m) => m.name)).toEqual(['base_model.model.transformer.h.0.attn.c_attn.lora_A.weight']);
    expect(error.message).toMatch(/missing: .*h\.1\.attn\.c_proj\.lora_B\.weight.*wrong shape: .*expected \[4, 64\], found \[8, 32\]/u);
    expect(model.namedParameters().map(([name]) => name)).toEqual(pathsBefore);
    expect(adapterModel.adapterNames).toEqual([]);
    model.dispose();
    await rm(directory, { recursive: true, force: true });
  });
});
