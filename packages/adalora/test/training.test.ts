import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, createLoraRegistry, initRuntime, loadAdapterModel, lora, readSafetensorsFile, saveAdapter, train } from '@lora/core';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  adalora,
  adaLoraAllocator,
  adaLoraRankHistory,
  adaLoraRankPattern,
  formatRankTable,
  isAdaLoraAdapter,
  renderRankChart,
  saveAdaLoraAdapter,
} from '../src/index.js';
import { maxAbsDifference, SmallNet } from './helpers.js';

const registry = createLoraRegistry({ plugins: [adalora({ seed: 3 })] });
const CONFIG = { initR: 4, targetR: 2, totalStep: 24, tinit: 4, tfinal: 6, deltaT: 2, loraAlpha: 8, targetModules: ['fc1', 'fc2', 'fc3'] };

describe('training with the AdaLoRA hooks (core trainer)', () => {
  let directory: string;
  beforeAll(async () => {
    await initRuntime();
    directory = await mkdtemp(path.join(tmpdir(), 'adalora-train-'));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it('saveAdaLoraAdapter refuses an adapter of another method, writing nothing', async () => {
    const mixed = createLoraRegistry({ plugins: [adalora({ seed: 3 }), lora({ seed: 3 })] });
    const peft = AdapterModel.create(new SmallNet(), { registry: mixed, plugin: 'adalora', config: CONFIG });
    peft.addAdapter('plain', { plugin: 'lora', config: { r: 2, targetModules: ['fc1'] } });
    const target = path.join(directory, 'mixed');
    await expect(saveAdaLoraAdapter(peft, target)).rejects.toThrow(
      `[adalora] saveAdaLoraAdapter: adapter "plain" is lora (LORA), not AdaLoRA; nothing was written to ${target}. Save it with saveAdapter from @lora/core.`,
    );
    expect(existsSync(target)).toBe(false);
    // The AdaLoRA adapter alone is saved.
    await saveAdaLoraAdapter(peft, target, { adapterNames: ['default'] });
    expect(existsSync(path.join(target, 'adapter_config.json'))).toBe(true);
    peft.dispose();
  });

  it('prunes to targetR × modules, keeps numTensors constant, and saves what it computes', async () => {
    const peft = AdapterModel.create(new SmallNet(), { registry, plugin: 'adalora', config: CONFIG });
    const x = tf.randomNormal([16, 12], 0, 1, 'float32', 1);
    const y = tf.randomNormal([16, 4], 0, 1, 'float32', 2);
    const before = tf.memory().numTensors;
    const counts: number[] = [];
    const result = await train({
      // The AdapterModel itself: train() runs its adapters' hooks (regulariser, rank allocation) by itself.
      model: peft,
      trainData: [{ x, y }],
      steps: 24,
      learningRate: 2e-2,
      lossFn: (batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(batch.x), batch.y))) as tf.Scalar),
      onProgress: (progress) => {
        if (progress.kind === 'step') counts.push(tf.memory().numTensors);
      },
    });
    // Importance state (6 tensors per module) lives from the first update to the final step (global
    // step 18 = trainer step 19), then is freed. The trainer's last good state holds the allocator's
    // state of one step earlier (clones: tensors that share the data), so it starts and ends one step later.
    const importance = 3 * 6;
    const afterFinal = counts[23]!;
    expect(counts[0]).toBe(afterFinal + importance);
    expect(new Set(counts.slice(1, 18))).toEqual(new Set([afterFinal + 2 * importance]));
    expect(counts[18]).toBe(afterFinal + importance);
    expect(new Set(counts.slice(19))).toEqual(new Set([afterFinal]));
    expect(tf.memory().numTensors).toBe(before);
    expect(result.losses[23]!).toBeLessThan(result.losses[0]!);

    const instances = peft.adapterInstances('default').filter((pair) => isAdaLoraAdapter(pair[1]));
    const total = instances.reduce((sum, [, adapter]) => sum + (isAdaLoraAdapter(adapter) ? adapter.rank : 0), 0);
    expect(total).toBe(2 * 3);
    const pattern = adaLoraRankPattern(peft)!;
    for (const [modulePath, adapter] of instances) {
      if (!isAdaLoraAdapter(adapter)) continue;
      const kept = pattern[`${modulePath}.lora_E`]!;
      expect(kept.filter(Boolean)).toHaveLength(adapter.rank);
      // Pruned singular values are exactly zero after the last step (re-masked after every update).
      adapter.loraE.dataSync().forEach((value, row) => {
        if (!kept[row]) expect(value).toBe(0);
      });
    }
    const history = adaLoraRankHistory(peft)!;
    expect(history.entries).toHaveLength(24);
    expect(history.entries.at(-1)!.total).toBe(6);
    expect(adaLoraAllocator(peft).finalized).toBe(true);
    console.log(formatRankTable(history));
    console.log(renderRankChart(history, { width: 24 }));

    peft.model.eval();
    const expected = peft.model.forward(x);
    for (const [label, save] of [
      ['saveAdaLoraAdapter', saveAdaLoraAdapter],
      ['saveAdapter', saveAdapter],
    ] as const) {
      const target = path.join(directory, label);
      await save(peft, target);
      const saved = await readSafetensorsFile(path.join(target, 'adapter_model.safetensors'));
      const json = JSON.parse(await readFile(path.join(target, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      // Both write PEFT's pruned form: core's saveAdapter goes through the adapter's tensorsForSave hook.
      {
        expect(json['rank_pattern']).toEqual(pattern);
        for (const [modulePath, adapter] of instances) {
          const rank = isAdaLoraAdapter(adapter) ? adapter.rank : -1;
          expect(saved.tensors.get(`base_model.model.${modulePath}.lora_A`)!.shape).toEqual([rank, adapter.namedTensors()[0]![1].shape[1]]);
          expect(saved.tensors.get(`base_model.model.${modulePath}.lora_E`)!.shape).toEqual([rank, 1]);
        }
      }
      const reloaded = await loadAdapterModel(new SmallNet(), target, { registry });
      reloaded.model.eval();
      const actual = reloaded.model.forward(x);
      const error = maxAbsDifference(actual.dataSync(), expected.dataSync());
      console.log(`trained adapter saved (${label}) and reloaded: max abs output difference ${error.toExponential(2)}`);
      expect(error).toBeLessThan(1e-6);
      actual.dispose();
      reloaded.dispose();
    }
    tf.dispose([x, y, expected]);
    peft.dispose();
  });
});
