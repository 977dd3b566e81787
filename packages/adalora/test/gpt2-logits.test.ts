import * as tf from '@tensorflow/tfjs-core';
import { causalLmLoss, createLoraRegistry, initRuntime, loadAdapterModel, train } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { loadPretrained, releaseCausalMasks } from '@lora/models';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { adalora, adaLoraRankHistory, isAdaLoraAdapter } from '../src/index.js';
import { ADALORA_FIXTURE, FIXTURES, maxAbsDifference, readJson } from './helpers.js';

interface Reference {
  inputs: { input_ids: number[][]; attention_mask: number[][] };
  logits: unknown;
  merged_logits: unknown;
}

const flat = (value: unknown): number[] => (Array.isArray(value) ? value.flatMap(flat) : [Math.fround(value as number)]);

describe('gpt2_adalora on the GPT-2 fixture (@lora/models)', () => {
  let reference: Reference;
  beforeAll(async () => {
    await initRuntime();
    reference = await readJson<Reference>(path.join(ADALORA_FIXTURE, 'reference.json'));
  });

  it("gives PEFT's logits unmerged and merged within 1e-4", async () => {
    const model = await loadPretrained(path.join(FIXTURES, 'models/gpt2'));
    const registry = createLoraRegistry({ plugins: [adalora()] });
    const adapterModel = await loadAdapterModel(model, ADALORA_FIXTURE, { registry });
    adapterModel.model.eval();
    const forward = model.forward.bind(model) as (ids: tf.Tensor, options: { attentionMask: tf.Tensor }) => tf.Tensor;
    // The models keep one causal mask per sequence length on purpose; only the adapter's tensors count here.
    releaseCausalMasks();
    await withoutTensorLeaks(() => {
      const ids = tf.tensor2d(reference.inputs.input_ids, undefined, 'int32');
      const mask = tf.tensor2d(reference.inputs.attention_mask, undefined, 'int32');
      const unmerged = forward(ids, { attentionMask: mask });
      const unmergedError = maxAbsDifference(unmerged.dataSync(), flat(reference.logits));
      adapterModel.merge();
      const merged = forward(ids, { attentionMask: mask });
      const mergedError = maxAbsDifference(merged.dataSync(), flat(reference.merged_logits));
      adapterModel.unmerge();
      console.log(`gpt2_adalora logits: max abs error unmerged ${unmergedError.toExponential(2)}, merged ${mergedError.toExponential(2)}`);
      expect(unmerged.shape).toEqual([2, 7, 257]);
      expect(unmergedError).toBeLessThan(1e-4);
      expect(mergedError).toBeLessThan(1e-4);
      tf.dispose([ids, mask, unmerged, merged]);
      releaseCausalMasks();
    });
    adapterModel.dispose();
  });

  it('continues training the loaded pruned adapter (rank-0 module included) with the hooks', async () => {
    const model = await loadPretrained(path.join(FIXTURES, 'models/gpt2'));
    const registry = createLoraRegistry({ plugins: [adalora()] });
    const adapterModel = await loadAdapterModel(model, ADALORA_FIXTURE, { registry, isTrainable: true });
    const ids = tf.tensor2d(reference.inputs.input_ids, undefined, 'int32');
    const forward = model.forward.bind(model) as (input: tf.Tensor) => tf.Tensor;
    const result = await train({
      model,
      trainData: [ids],
      steps: 4,
      learningRate: 1e-3,
      hooks: adapterModel.trainingHooks(),
      lossFn: (batch) => tf.tidy(() => causalLmLoss(forward(batch), batch)),
    });
    expect(result.losses.every(Number.isFinite)).toBe(true);
    const ranks = adapterModel.adapterInstances('default').map(([p, a]) => [p, isAdaLoraAdapter(a) ? a.rank : -1]);
    // The loaded budget (Σ rows = 12) already equals target_r × 6, so nothing more is pruned.
    expect(Object.fromEntries(ranks)).toEqual({
      'transformer.h.0.attn.c_attn': 1,
      'transformer.h.0.attn.c_proj': 1,
      'transformer.h.0.mlp.c_proj': 2,
      'transformer.h.1.attn.c_attn': 0,
      'transformer.h.1.attn.c_proj': 4,
      'transformer.h.1.mlp.c_proj': 4,
    });
    expect(adaLoraRankHistory(adapterModel)!.entries).toHaveLength(4);
    ids.dispose();
    adapterModel.dispose();
  });
});
