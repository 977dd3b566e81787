import * as tf from '@tensorflow/tfjs-core';
import { createLoraRegistry, initRuntime, loadAdapter, loadAdapterModel, lora, saveAdapter, AdapterModel, type Module } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { loadPretrained, releaseCausalMasks } from '@lora/models';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dora, DoraAdapter } from '../src/index.js';
import { FIXTURES, maxAbsoluteError, maxRelativeError } from './helpers.js';

const DIRECTORY = path.join(FIXTURES, 'adapters/gpt2_dora');
const MODEL = path.join(FIXTURES, 'models/gpt2');

interface Reference {
  inputs: { input_ids: number[][]; attention_mask: number[][] };
  logits: unknown;
  merged_logits: unknown;
}
const reference = JSON.parse(readFileSync(path.join(DIRECTORY, 'reference.json'), 'utf8')) as Reference;
const baseReference = JSON.parse(readFileSync(path.join(MODEL, 'reference.json'), 'utf8')) as { logits: unknown };

function flat(value: unknown): number[] {
  return Array.isArray(value) ? value.flatMap(flat) : [Math.fround(value as number)];
}

/** The GPT-2 LM forward as `@lora/models` exposes it. */
type Gpt2 = Module & { forward(inputIds: tf.Tensor, options?: { attentionMask?: tf.Tensor }): tf.Tensor };

describe("the PEFT-saved DoRA adapter on the GPT-2 fixture gives PEFT's logits", () => {
  const registry = createLoraRegistry({ plugins: [lora(), dora()] });
  let inputIds: tf.Tensor2D;
  let attentionMask: tf.Tensor2D;

  beforeAll(async () => {
    await initRuntime();
    inputIds = tf.tensor2d(reference.inputs.input_ids, undefined, 'int32');
    attentionMask = tf.tensor2d(reference.inputs.attention_mask, undefined, 'int32');
  });
  afterAll(() => {
    tf.dispose([inputIds, attentionMask]);
  });

  const logitsOf = (model: Gpt2): Float32Array => tf.tidy(() => model.forward(inputIds, { attentionMask }).dataSync() as Float32Array);

  it('unmerged and merged, within 1e-4', async () => {
    const model = (await loadPretrained(MODEL)) as Gpt2;
    const adapterModel = await loadAdapterModel(model, DIRECTORY, { registry });
    expect(adapterModel.adapterInstances('default').every(([, instance]) => instance instanceof DoraAdapter)).toBe(true);
    // The models keep one causal mask per sequence length on purpose; only the adapter's tensors count here.
    releaseCausalMasks();
    await withoutTensorLeaks(() => {
      const unmerged = logitsOf(model);
      const expected = flat(reference.logits);
      const unmergedError = maxAbsoluteError(unmerged, expected);
      // The adapter really changes the output (PEFT: 0.0945 away from the base model).
      const changed = maxAbsoluteError(unmerged, flat(baseReference.logits));
      adapterModel.merge();
      const merged = logitsOf(model);
      const mergedError = maxAbsoluteError(merged, flat(reference.merged_logits));
      const mergedVsUnmerged = maxRelativeError(merged, unmerged);
      adapterModel.unmerge();
      const afterUnmerge = maxAbsoluteError(logitsOf(model), expected);
      console.log(
        `gpt2_dora logits: unmerged max abs err ${unmergedError.toExponential(2)} (rel ${maxRelativeError(unmerged, expected).toExponential(2)}), ` +
          `merged ${mergedError.toExponential(2)}, merged vs unmerged rel ${mergedVsUnmerged.toExponential(2)}, after unmerge ${afterUnmerge.toExponential(2)}, vs base model ${changed.toFixed(4)}`,
      );
      expect(unmergedError).toBeLessThan(1e-4);
      expect(mergedError).toBeLessThan(1e-4);
      expect(mergedVsUnmerged).toBeLessThan(1e-5);
      expect(afterUnmerge).toBeLessThan(1e-4);
      expect(changed).toBeGreaterThan(0.05);
      releaseCausalMasks();
    });
    adapterModel.dispose();
  });

  it('saves and loads back to identical logits', async () => {
    const directory = await mkdtemp(path.join(tmpdir(), 'lora-dora-gpt2-'));
    try {
      const model = (await loadPretrained(MODEL)) as Gpt2;
      const adapterModel = await loadAdapterModel(model, DIRECTORY, { registry });
      const before = logitsOf(model);
      await saveAdapter(adapterModel, directory);
      const fresh = new AdapterModel((await loadPretrained(MODEL)) as Gpt2, { registry });
      await loadAdapter(fresh, directory);
      expect(maxAbsoluteError(logitsOf(fresh.model), before)).toBe(0);
      adapterModel.dispose();
      fresh.dispose();
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });
});
