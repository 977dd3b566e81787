import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, createLoraRegistry, initRuntime, loadAdapterModel, readSafetensorsFile } from '@lora/core';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { adalora, adaLoraAllocator, adaLoraRankHistory, formatRankTable, isAdaLoraAdapter, saveAdaLoraAdapter, type AdaLoraAdapter } from '../src/index.js';
import { maxAbsDifference, SmallNet } from './helpers.js';

const registry = createLoraRegistry({ plugins: [adalora({ seed: 9 })] });

function adaptersOf(peft: AdapterModel<SmallNet>): [string, AdaLoraAdapter][] {
  return peft.adapterInstances('default').filter((pair): pair is [string, AdaLoraAdapter] => isAdaLoraAdapter(pair[1]));
}

/** One SGD step by hand, then the allocator, checking the output across growth steps. */
function runSteps(peft: AdapterModel<SmallNet>, steps: number, onStep: (step: number, run: () => ReturnType<ReturnType<typeof adaLoraAllocator>['updateAndAllocate']>) => void): void {
  const x = tf.randomNormal([16, 12], 0, 1, 'float32', 5);
  const y = tf.randomNormal([16, 4], 0, 1, 'float32', 6);
  const variables = peft.model.trainableVariables();
  const allocator = adaLoraAllocator(peft);
  for (let step = 0; step < steps; step++) {
    const { grads, value } = tf.variableGrads(() => tf.mean(tf.square(tf.sub(peft.model.forward(x), y))) as tf.Scalar, variables);
    const gradients = new Map(variables.map((v) => [v, grads[v.name]!] as const));
    tf.tidy(() => variables.forEach((v) => v.assign(tf.sub(v, tf.mul(gradients.get(v)!, 0.05)))));
    onStep(step, () => allocator.updateAndAllocate(step, gradients));
    tf.dispose([value, ...Object.values(grads)]);
  }
  tf.dispose([x, y]);
}

describe('rank growth (growth option)', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('leaves the output exactly unchanged at the moment of growth and grows the module with the highest mean triplet score', async () => {
    await withoutTensorLeaks(() => {
    const peft = AdapterModel.create(new SmallNet(2), {
      registry,
      plugin: 'adalora',
      config: { initR: 4, targetR: 3, totalStep: 20, tinit: 2, tfinal: 4, targetModules: ['fc1', 'fc2', 'fc3'], growth: { startRank: 1, every: 3 } },
    });
    expect(adaptersOf(peft).map(([, a]) => [a.rows, a.rank])).toEqual([
      [4, 1],
      [4, 1],
      [4, 1],
    ]);
    const probe = tf.randomNormal([5, 12], 0, 1, 'float32', 11);
    let growthEvents = 0;
    runSteps(peft, 16, (step, allocate) => {
      peft.model.eval();
      const before = peft.model.forward(probe);
      const liveBefore = adaptersOf(peft).map(([path, a]) => [path, a.liveRows()] as const);
      const result = allocate();
      const after = peft.model.forward(probe);
      peft.model.train();
      if (Object.keys(result.grown).length > 0) {
        growthEvents += 1;
        expect(maxAbsDifference(after.dataSync(), before.dataSync())).toBe(0);
        // The rule: among modules with a dormant slot, the one whose live triplets have the highest mean
        // score (the importance updated this step).
        const scores = adaLoraAllocator(peft).tripletScores();
        const means = liveBefore.filter(([, live]) => live.includes(false)).map(([path, live]) => {
          const values = scores.get(path)!;
          const rows = live.flatMap((on, row) => (on ? [values[row]!] : []));
          return [path, rows.reduce((a, b) => a + b, 0) / rows.length] as const;
        });
        const best = [...means].sort((a, b) => b[1] - a[1])[0]![0];
        expect(result.grown).toEqual({ [best]: 1 });
      } else {
        expect(step % 3 !== 0 || step === 0 || step >= 16).toBe(true);
      }
      tf.dispose([before, after]);
    });
    expect(growthEvents).toBe(5); // steps 3, 6, 9, 12, 15
    expect(adaptersOf(peft).reduce((sum, [, a]) => sum + a.rank, 0)).toBe(3 + 5);
    tf.dispose(probe);
    // The schedule's final step (16) was not reached, so the importance state is still held. Core's
    // Module.dispose frees variables without calling adapter dispose(), so free the allocator here.
    adaLoraAllocator(peft).dispose();
    peft.dispose();
    });
  });

  it('updateAndAllocateAsync gives updateAndAllocate’s results and weights step for step, reading nothing synchronously', async () => {
    await withoutTensorLeaks(async () => {
      // Growth (every 3 steps), budgeting (every step after tinit), the final step (16) and fixed steps after it.
      const config = { initR: 4, targetR: 2, totalStep: 20, tinit: 2, tfinal: 4, targetModules: ['fc1', 'fc2', 'fc3'], growth: { startRank: 1, every: 3 } };
      const [sync, async] = [0, 1].map(() => AdapterModel.create(new SmallNet(4), { registry, plugin: 'adalora', config }));
      const x = tf.randomNormal([16, 12], 0, 1, 'float32', 5);
      const y = tf.randomNormal([16, 4], 0, 1, 'float32', 6);
      const synchronousReads = vi.spyOn(tf.Tensor.prototype, 'dataSync');
      const phases = new Set<string>();
      let grown = 0;
      try {
        for (let step = 0; step < 19; step++) {
          const results = [];
          for (const peft of [sync!, async!]) {
            const variables = peft.model.trainableVariables();
            const { grads, value } = tf.variableGrads(() => tf.mean(tf.square(tf.sub(peft.model.forward(x), y))) as tf.Scalar, variables);
            const gradients = new Map(variables.map((v) => [v, grads[v.name]!] as const));
            tf.tidy(() => variables.forEach((v) => v.assign(tf.sub(v, tf.mul(gradients.get(v)!, 0.05)))));
            const allocator = adaLoraAllocator(peft);
            synchronousReads.mockClear();
            results.push(peft === sync ? allocator.updateAndAllocate(step, gradients) : await allocator.updateAndAllocateAsync(step, gradients));
            if (peft === async) expect(synchronousReads).not.toHaveBeenCalled();
            tf.dispose([value, ...Object.values(grads)]);
          }
          expect(results[1], `step ${step}`).toEqual(results[0]);
          phases.add(results[0]!.phase);
          grown += Object.keys(results[0]!.grown).length;
        }
      } finally {
        synchronousReads.mockRestore();
      }
      expect([...phases].sort()).toEqual(['budgeting', 'final', 'fixed', 'warmup']);
      expect(grown).toBeGreaterThan(0);
      const [syncWeights, asyncWeights] = [sync!, async!].map((peft) => peft.model.trainableVariables().map((v) => [...v.dataSync()]));
      expect(asyncWeights).toEqual(syncWeights);
      expect(adaLoraRankHistory(async!)!.entries).toEqual(adaLoraRankHistory(sync!)!.entries);
      tf.dispose([x, y]);
      sync!.dispose();
      async!.dispose();
    });
  });

  it('keeps a grown triplet through its warm-up even when the budget prunes, and saves a PEFT-loadable adapter', async () => {
    await withoutTensorLeaks(async () => {
    const peft = AdapterModel.create(new SmallNet(3), {
      registry,
      plugin: 'adalora',
      config: { initR: 4, targetR: 1, totalStep: 16, tinit: 1, tfinal: 3, targetModules: ['fc1', 'fc2', 'fc3'], growth: { startRank: 3, every: 4, modules: 2 } },
    });
    let checked = 0;
    runSteps(peft, 16, (step, allocate) => {
      const result = allocate();
      for (const path of Object.keys(result.grown)) {
        const adapter = adaptersOf(peft).find(([p]) => p === path)![1];
        const live = adapter.liveRows();
        const grownRow = live.lastIndexOf(true);
        // Its score is 0 (importance starts from zero), yet it is kept while the budget prunes others.
        expect(adapter.keptRows()[grownRow]).toBe(true);
        expect(adaLoraAllocator(peft).tripletScores().get(path)![grownRow]).toBe(0);
        if (result.phase === 'budgeting' && result.budget < adaptersOf(peft).reduce((s, [, a]) => s + a.liveRows().filter(Boolean).length, 0)) checked += 1;
      }
    });
    expect(checked).toBeGreaterThan(0);
    expect(adaptersOf(peft).reduce((sum, [, a]) => sum + a.rank, 0)).toBe(3);
    const history = adaLoraRankHistory(peft)!;
    expect(formatRankTable(history)).toContain('growth: s4');

    const directory = await mkdtemp(path.join(tmpdir(), 'adalora-growth-'));
    try {
      await saveAdaLoraAdapter(peft, directory);
      const json = JSON.parse(await readFile(path.join(directory, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      const pattern = json['rank_pattern'] as Record<string, boolean[]>;
      // Patterns keep PEFT's length (init_r); the extension fields are not written.
      expect(Object.values(pattern).every((p) => p.length === 4)).toBe(true);
      expect(json['growth']).toBeUndefined();
      const saved = await readSafetensorsFile(path.join(directory, 'adapter_model.safetensors'));
      for (const [modulePath, adapter] of adaptersOf(peft)) expect(saved.tensors.get(`base_model.model.${modulePath}.lora_E`)!.shape).toEqual([adapter.rank, 1]);
      const probe = tf.randomNormal([5, 12], 0, 1, 'float32', 12);
      peft.model.eval();
      const expected = peft.model.forward(probe);
      const reloaded = await loadAdapterModel(new SmallNet(3), directory, { registry });
      reloaded.model.eval();
      const actual = reloaded.model.forward(probe);
      expect(maxAbsDifference(actual.dataSync(), expected.dataSync())).toBe(0);
      tf.dispose([probe, expected, actual]);
      reloaded.dispose();
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
    peft.dispose();
    });
  });
});
