import * as tf from '@tensorflow/tfjs-core';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AdapterModel, Linear, createLoraRegistry, entryToTensor, initRuntime, loadAdapterModel, lora, readSafetensorsFile } from '@lora/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadPretrained, savePretrained, type BertForSequenceClassification, type Gpt2LMHeadModel } from '../src/index.js';
import { fixture, flat, ids, readJson, relativeError, withoutLeaks } from './helpers.js';

interface AdapterReference {
  inputs: { input_ids: number[][]; attention_mask: number[][]; token_type_ids?: number[][] };
  logits: unknown;
  merged_logits: unknown;
}

const registry = () => createLoraRegistry({ plugins: [lora()] });

describe('PEFT adapters on loaded models', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('reproduces PEFT logits for gpt2_lora (c_attn + both c_proj), unmerged and merged', async () => {
    const reference = readJson<AdapterReference>(fixture('adapters/gpt2_lora/reference.json'));
    const model = (await loadPretrained(fixture('models/gpt2'))) as Gpt2LMHeadModel;
    const adapterModel = await loadAdapterModel(model, fixture('adapters/gpt2_lora'), { registry: registry() });
    expect(adapterModel.adapterLayers().map(([path]) => path)).toEqual([
      'transformer.h.0.attn.c_attn',
      'transformer.h.0.attn.c_proj',
      'transformer.h.0.mlp.c_proj',
      'transformer.h.1.attn.c_attn',
      'transformer.h.1.attn.c_proj',
      'transformer.h.1.mlp.c_proj',
    ]);
    const input = ids(reference.inputs.input_ids);
    const attentionMask = ids(reference.inputs.attention_mask);
    const unmergedError = await withoutLeaks(() => {
      const unmerged = model.forward(input, { attentionMask });
      const error = relativeError(unmerged, flat(reference.logits));
      unmerged.dispose();
      return error;
    });
    const merged = adapterModel.mergeAndUnload();
    expect(merged.getSubmodule('transformer.h.0.attn.c_attn')).toBeInstanceOf(Linear);
    const mergedLogits = merged.forward(input, { attentionMask });
    const mergedError = relativeError(mergedLogits, flat(reference.merged_logits));
    const mergedWeight = await readSafetensorsFile(fixture('adapters/gpt2_lora/merged_weight.safetensors'));
    const expectedWeight = entryToTensor(mergedWeight.tensors.get('transformer.h.0.attn.c_attn.weight')!);
    const weightError = relativeError(merged.transformer.h.get(0).attn.c_attn.getOwnParameter('weight')!, expectedWeight.dataSync());
    console.log(`gpt2_lora: unmerged rel err ${unmergedError.toExponential(2)}, merged ${mergedError.toExponential(2)}, merged weight ${weightError.toExponential(2)}`);
    expect(unmergedError).toBeLessThan(1e-4);
    expect(mergedError).toBeLessThan(1e-4);
    expect(weightError).toBeLessThan(1e-6);
    tf.dispose([input, attentionMask, mergedLogits, expectedWeight]);
    merged.dispose();
  });

  it('reproduces PEFT logits for bert_lora_cls (query/value + modules_to_save classifier), unmerged and merged', async () => {
    const reference = readJson<AdapterReference>(fixture('adapters/bert_lora_cls/reference.json'));
    const model = (await loadPretrained(fixture('models/bert'))) as BertForSequenceClassification;
    const adapterModel = await loadAdapterModel(model, fixture('adapters/bert_lora_cls'), { registry: registry() });
    expect(adapterModel.modulesToSaveWrappers().map(([path]) => path)).toEqual(['classifier']);
    expect(adapterModel.adapterLayers()).toHaveLength(4);
    const input = ids(reference.inputs.input_ids);
    const attentionMask = ids(reference.inputs.attention_mask);
    const tokenTypeIds = ids(reference.inputs.token_type_ids!);
    {
      const unmergedError = await withoutLeaks(() => {
        const unmerged = model.forward(input, { attentionMask, tokenTypeIds });
        const error = relativeError(unmerged, flat(reference.logits));
        unmerged.dispose();
        return error;
      });
      const merged = adapterModel.mergeAndUnload();
      const mergedLogits = merged.forward(input, { attentionMask, tokenTypeIds });
      const mergedError = relativeError(mergedLogits, flat(reference.merged_logits));
      console.log(`bert_lora_cls: unmerged rel err ${unmergedError.toExponential(2)}, merged ${mergedError.toExponential(2)}`);
      expect(unmergedError).toBeLessThan(1e-4);
      expect(mergedError).toBeLessThan(1e-4);
      expect(merged.namedParameters().map(([name]) => name)).toContain('classifier.weight');
      mergedLogits.dispose();
    }
    tf.dispose([input, attentionMask, tokenTypeIds]);
    model.dispose();
  });

  it('injects LoRA with PEFT default targets when none are given (gpt2 → c_attn)', async () => {
    const model = (await loadPretrained(fixture('models/gpt2'))) as Gpt2LMHeadModel;
    const adapterModel = AdapterModel.create(model, { registry: registry(), config: { r: 2, loraAlpha: 4, fanInFanOut: true } });
    expect(adapterModel.adapterLayers().map(([path]) => path)).toEqual(['transformer.h.0.attn.c_attn', 'transformer.h.1.attn.c_attn']);
    expect(adapterModel.trainableParameters().trainable).toBe(2 * (2 * 64 + 2 * 192));
    await expect(savePretrained(model, path.join(tmpdir(), 'lora-models-never-written'))).rejects.toThrow(/mergeAndUnload/u);
    adapterModel.dispose();
  });
});
