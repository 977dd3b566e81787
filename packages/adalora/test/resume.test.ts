import * as tf from '@tensorflow/tfjs-core';
import {
  AdapterModel,
  CheckpointError,
  createLoraRegistry,
  initRuntime,
  readCheckpointStep,
  readSafetensorsFile,
  train,
  TRAINER_CHECKPOINT_NAME,
  writeSafetensorsFile,
  type SafetensorsEntry,
} from '@lora/core';
import { runUntilKilled, withoutTensorLeaks } from '@lora/core/testing';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adalora, adaLoraAllocator, adaLoraRankHistory, isAdaLoraAdapter, type AdaLoraAdapter } from '../src/index.js';
import { SmallNet } from './helpers.js';

// totalStep 30, tinit 3, tfinal 6: warm-up to step 3, the cubic budget from 4 to 23 (masking every
// deltaT = 2), the final mask at 24 (importance freed), the fixed pattern after.
const SCHEDULE = { initR: 4, targetR: 1, totalStep: 30, tinit: 3, tfinal: 6, deltaT: 2, loraAlpha: 8, targetModules: ['fc1', 'fc2', 'fc3'] };
const STEPS = SCHEDULE.totalStep;

/** A fresh model every time: the plugin's seed fixes the initial adapter and the growth draws. */
function create(config: Readonly<Record<string, unknown>> = {}): AdapterModel<SmallNet> {
  return AdapterModel.create(new SmallNet(3), { registry: createLoraRegistry({ plugins: [adalora({ seed: 4 })] }), plugin: 'adalora', config: { ...SCHEDULE, ...config } });
}

function adaptersOf(peft: AdapterModel<SmallNet>): [string, AdaLoraAdapter][] {
  return peft.adapterInstances('default').filter((pair): pair is [string, AdaLoraAdapter] => isAdaLoraAdapter(pair[1]));
}

/** What must match: every trainable variable's bytes, each module's kept and live rows, the rank history. */
function outcome(peft: AdapterModel<SmallNet>) {
  return {
    weights: Object.fromEntries(peft.namedTrainableVariables().map(([name, variable]) => [name, Array.from(variable.dataSync())])),
    kept: Object.fromEntries(adaptersOf(peft).map(([modulePath, adapter]) => [modulePath, adapter.keptRows()])),
    live: Object.fromEntries(adaptersOf(peft).map(([modulePath, adapter]) => [modulePath, adapter.liveRows()])),
    history: structuredClone(adaLoraRankHistory(peft)),
  };
}

describe('train() with an AdaLoRA adapter: exact resume', () => {
  let data: { x: tf.Tensor; y: tf.Tensor }[];
  let root: string;
  beforeAll(async () => {
    await initRuntime();
    data = Array.from({ length: 3 }, (_, i) => ({ x: tf.randomNormal([16, 12], 0, 1, 'float32', 20 + i), y: tf.randomNormal([16, 4], 0, 1, 'float32', 40 + i) }));
    root = await mkdtemp(path.join(tmpdir(), 'adalora-resume-'));
  });
  afterAll(async () => {
    tf.dispose(data.flatMap(({ x, y }) => [x, y]));
    await rm(root, { recursive: true, force: true });
  });

  const mse = (peft: AdapterModel<SmallNet>) => (batch: { x: tf.Tensor; y: tf.Tensor }) =>
    tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(batch.x), batch.y))) as tf.Scalar);
  const run = (peft: AdapterModel<SmallNet>, checkpoint?: { directory: string; every: number }, lossFn = mse(peft)) =>
    train({ model: peft, trainData: data, steps: STEPS, learningRate: 2e-2, seed: 7, checkpoint, lossFn });

  const straight = async (config: Readonly<Record<string, unknown>>) => {
    const peft = create(config);
    await run(peft);
    const result = outcome(peft);
    adaLoraAllocator(peft).dispose();
    peft.dispose();
    return result;
  };

  /** Kill the run as step `killStep` (1-based) starts, resume it in a new model, return the outcome. */
  const killedAndResumed = async (config: Readonly<Record<string, unknown>>, killStep: number, name: string) => {
    const checkpoint = { directory: path.join(root, name), every: 1 };
    const killed = create(config);
    const kill = await runUntilKilled(() => run(killed, checkpoint), (point) => point.operation === 'train-step' && point.path === String(killStep));
    adaLoraAllocator(killed).dispose();
    killed.dispose();
    expect(kill.killed).toBe(true);
    // Checkpoints are written once the next step has seen a finite loss: the newest is that of killStep − 2.
    expect(await readCheckpointStep(checkpoint.directory)).toBe(killStep - 2);
    const resumed = create(config);
    const result = await run(resumed, checkpoint);
    expect(result.startStep).toBe(killStep - 2);
    const after = outcome(resumed);
    adaLoraAllocator(resumed).dispose();
    resumed.dispose();
    return after;
  };

  // Tolerance: none. The resumed run performs the same float32 operations in the same order on
  // the same backend from the same stored bits, so every weight must match bit for bit.
  it.each([
    ['in the budgeting phase (between tinit and the final mask)', 14],
    ['after the final mask (the fixed pattern must still be re-applied)', 28],
  ])('ends with the same weights, ranks and history as an uninterrupted run when killed %s', async (_, killStep) => {
    await withoutTensorLeaks(async () => {
      const expected = await straight({});
      // The schedule really pruned: fewer kept triplets than held, as the target budget says.
      expect(Object.values(expected.kept).flat().filter(Boolean)).toHaveLength(SCHEDULE.targetR * 3);
      const actual = await killedAndResumed({}, killStep, `plain-${killStep}`);
      expect(actual.weights).toEqual(expected.weights);
      expect(actual.kept).toEqual(expected.kept);
      expect(actual.history).toEqual(expected.history);
    });
  });

  it('ends with the same weights, grown rows and ranks as an uninterrupted run with rank growth', async () => {
    await withoutTensorLeaks(async () => {
      const growth = { initR: 4, targetR: 2, growth: { startRank: 1, every: 4 } };
      const expected = await straight(growth);
      // Growth happened before the kill (step 4 and 8 of the schedule) and after it.
      const grownAt = expected.history!.entries.filter((entry) => Object.keys(entry.grown).length > 0).map((entry) => entry.step);
      expect(grownAt.some((step) => step < 11) && grownAt.some((step) => step > 11)).toBe(true);
      const actual = await killedAndResumed(growth, 13, 'growth');
      expect(actual.live).toEqual(expected.live);
      expect(actual.weights).toEqual(expected.weights);
      expect(actual.kept).toEqual(expected.kept);
      expect(actual.history).toEqual(expected.history);
    });
  });

  it('rolls the allocator back with the weights when the loss turns non-finite in the pruning phase, and resumes from that checkpoint to the uninterrupted result', async () => {
    await withoutTensorLeaks(async () => {
      const expected = await straight({});
      const checkpoint = { directory: path.join(root, 'diverged'), every: 100 };
      const diverged = create();
      let calls = 0;
      // Step 15's loss is NaN: the weights after step 14 are not good, step 13's state is kept.
      const poisoned = (batch: { x: tf.Tensor; y: tf.Tensor }) => tf.tidy(() => tf.add(mse(diverged)(batch), ++calls === 15 ? Number.NaN : 0) as tf.Scalar);
      const error = await run(diverged, checkpoint, poisoned).catch((caught: unknown) => caught);
      expect(error).toMatchObject({ reason: 'non-finite-loss', keptStep: 13, checkpointStep: 13 });
      // The allocator is back at step 13 too: 13 history entries (global steps 0–12), as the weights.
      expect(adaLoraRankHistory(diverged)!.entries.map((entry) => entry.step)).toEqual(Array.from({ length: 13 }, (_, i) => i));
      adaLoraAllocator(diverged).dispose();
      diverged.dispose();
      const resumed = create();
      expect((await run(resumed, checkpoint)).startStep).toBe(13);
      const actual = outcome(resumed);
      adaLoraAllocator(resumed).dispose();
      resumed.dispose();
      expect(actual.weights).toEqual(expected.weights);
      expect(actual.kept).toEqual(expected.kept);
      expect(actual.history).toEqual(expected.history);
    });
  });

  it('refuses, in one line naming the file, field, expected and found, a checkpoint written with another schedule or with a damaged importance tensor', async () => {
    await withoutTensorLeaks(async () => {
      const checkpoint = { directory: path.join(root, 'refused'), every: 1 };
      const killed = create();
      await runUntilKilled(() => run(killed, checkpoint), (point) => point.operation === 'train-step' && point.path === '10');
      adaLoraAllocator(killed).dispose();
      killed.dispose();
      const file = path.join(checkpoint.directory, TRAINER_CHECKPOINT_NAME);
      const resumeError = async (config: Readonly<Record<string, unknown>> = {}) => {
        const peft = create(config);
        const error = await run(peft, checkpoint).catch((caught: unknown) => caught);
        // Refused before any step: the allocator never ran.
        expect(adaLoraRankHistory(peft)?.entries ?? []).toEqual([]);
        adaLoraAllocator(peft).dispose();
        peft.dispose();
        return error as Error;
      };
      const otherSchedule = await resumeError({ tinit: 4 });
      expect(otherSchedule).toBeInstanceOf(CheckpointError);
      expect(otherSchedule.message).toBe(
        `[adalora] Cannot resume from ${file}: hook state "adalora.default".schedule.tinit should be 4 (this adapter's config), found 3. Resume with the adapter config and model the run started with, or delete the checkpoint to start over.`,
      );

      const contents = await readSafetensorsFile(file);
      const tensors = new Map<string, SafetensorsEntry>(contents.tensors);
      const key = 'hook.adalora.default.fc2.lora_B.uncertainty';
      const entry = tensors.get(key)!;
      tensors.set(key, { ...entry, shape: [entry.shape[1]!, entry.shape[0]!] });
      await writeSafetensorsFile(file, tensors, contents.metadata);
      const damaged = await resumeError();
      expect(damaged).toBeInstanceOf(CheckpointError);
      expect(damaged.message).not.toContain('\n');
      expect(damaged.message).toMatch(/^\[adalora\] Cannot resume from \S+: tensor fc2\.lora_B\.uncertainty should be shape \[16, 4\], found \[4, 16\]\. .*delete it to start over\.$/u);
    });
  });
});
