import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AdapterModel,
  CheckpointError,
  createLoraRegistry,
  initRuntime,
  lora,
  Module,
  readSafetensorsFile,
  train,
  TRAINER_CHECKPOINT_NAME,
  TrainingError,
  writeSafetensorsFile,
  type TrainingHooks,
} from '../src/index.js';
import { runUntilKilled, withoutTensorLeaks } from '../src/testing.js';
import { Gpt2ShapedTree } from './helpers.js';

interface Batch {
  readonly x: tf.Tensor;
  readonly y: tf.Tensor;
}

/**
 * A stateful hook: an EMA of one variable's squared gradient (a tensor) and a step count (JSON).
 * Its state depends on every step it saw, so a restart from scratch is visible.
 */
class EmaHook {
  ema: tf.Tensor | null = null;
  count = 0;
  readonly restoredFrom: string[] = [];

  constructor(
    readonly variable: tf.Variable,
    readonly key = 'test.ema',
  ) {}

  hooks(): TrainingHooks {
    return {
      afterStep: ({ gradients }) => {
        const gradient = gradients.get(this.variable)!;
        const next = tf.tidy(() => (this.ema ? tf.add(tf.mul(this.ema, 0.9), tf.mul(tf.square(gradient), 0.1)) : tf.square(gradient)));
        this.ema?.dispose();
        this.ema = next;
        this.count += 1;
      },
      checkpoint: {
        key: this.key,
        state: () => ({ tensors: this.ema ? { ema: tf.clone(this.ema) } : ({} as Record<string, tf.Tensor>), json: { count: this.count } }),
        restore: (state, { source }) => {
          const count = (state.json as { count?: unknown } | null)?.count;
          if (!Number.isInteger(count)) throw new CheckpointError(`[test] Cannot resume from ${source}: count should be an integer, found ${JSON.stringify(count)}.`);
          this.restoredFrom.push(source);
          this.ema?.dispose();
          this.ema = state.tensors.ema ? tf.clone(state.tensors.ema) : null;
          this.count = count as number;
        },
      },
    };
  }

  emaValues(): number[] {
    return this.ema ? Array.from(this.ema.dataSync()) : [];
  }

  dispose(): void {
    this.ema?.dispose();
  }
}

function setUp(): { model: AdapterModel<Gpt2ShapedTree>; hook: EmaHook; dispose: () => void } {
  const registry = createLoraRegistry({ plugins: [lora({ seed: 3 })] });
  const model = AdapterModel.create(new Gpt2ShapedTree({ width: 8, layers: 1, seed: 1 }), { registry, config: { r: 2, targetModules: ['c_attn'] } });
  const hook = new EmaHook(model.namedTrainableVariables()[0]![1]);
  return { model, hook, dispose: () => (hook.dispose(), model.dispose()) };
}

/** A module whose one parameter can be rebuilt at another length (as a hook restoring grown state would). */
class Resizable extends Module {
  constructor(length: number) {
    super();
    this.resize(length);
  }

  resize(length: number): void {
    const initial = tf.linspace(0, 1, length);
    this.registerParameter('w', initial);
    initial.dispose();
  }

  get length(): number {
    return this.getOwnParameter('w')!.shape[0]!;
  }
}

describe('train() with a training hook that has checkpoint state', () => {
  let data: Batch[];
  let root: string;
  beforeAll(async () => {
    await initRuntime();
    data = Array.from({ length: 3 }, (_, i) => ({ x: tf.randomNormal([2, 3, 8], 0, 1, 'float32', 10 + i), y: tf.randomNormal([2, 3, 17], 0, 1, 'float32', 20 + i) }));
    root = await mkdtemp(path.join(tmpdir(), 'lora-hook-checkpoint-'));
  });
  afterAll(async () => {
    tf.dispose(data.flatMap(({ x, y }) => [x, y]));
    await rm(root, { recursive: true, force: true });
  });

  const options = (run: ReturnType<typeof setUp>, extra: Partial<Parameters<typeof train<Batch>>[0]> = {}) => ({
    model: run.model.model,
    hooks: [run.hook.hooks()],
    trainData: data,
    steps: 6,
    learningRate: 1e-2,
    lossFn: (batch: Batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(run.model.model.forward(batch.x), batch.y))) as tf.Scalar),
    ...extra,
  });
  /** A run of `steps` without checkpoints: the hook's state and the weights at its end. */
  const straight = async (steps: number) => {
    const run = setUp();
    await train(options(run, { steps }));
    const result = { count: run.hook.count, ema: run.hook.emaValues(), weights: run.model.namedTrainableVariables().map(([, v]) => Array.from(v.dataSync())) };
    run.dispose();
    return result;
  };
  /** The checkpoint of a run killed as step 4 starts (it holds step 2), for the error cases. */
  const killedCheckpoint = async (name: string, withHook = true) => {
    const checkpoint = { directory: path.join(root, name), every: 1 };
    const run = setUp();
    const kill = await runUntilKilled(() => train(options(run, { checkpoint, hooks: withHook ? [run.hook.hooks()] : [] })), (point) => point.operation === 'train-step' && point.path === '4');
    run.dispose();
    expect(kill.killed).toBe(true);
    return checkpoint;
  };
  const resumeError = async (checkpoint: { directory: string; every: number }, hooks?: (run: ReturnType<typeof setUp>) => TrainingHooks[]) => {
    const run = setUp();
    const error = await train(options(run, { checkpoint, ...(hooks ? { hooks: hooks(run) } : {}) })).catch((caught: unknown) => caught);
    // Nothing was trained on a refused checkpoint.
    expect(run.hook.count).toBe(0);
    run.dispose();
    return error as Error;
  };
  const rewrite = async (checkpoint: { directory: string }, change: (file: { metadata: Record<string, string>; tensors: Map<string, unknown> }) => void) => {
    const file = path.join(checkpoint.directory, TRAINER_CHECKPOINT_NAME);
    const contents = await readSafetensorsFile(file);
    const editable = { metadata: { ...contents.metadata }, tensors: new Map(contents.tensors) };
    change(editable);
    await writeSafetensorsFile(file, editable.tensors as typeof contents.tensors, editable.metadata);
    return file;
  };

  it('saves the state in the checkpoint file and restores it before training continues, so a killed run ends as an uninterrupted one', async () => {
    await withoutTensorLeaks(async () => {
      const expected = await straight(6);
      expect(expected.count).toBe(6);
      const checkpoint = await killedCheckpoint('round-trip');
      const file = await readSafetensorsFile(path.join(checkpoint.directory, TRAINER_CHECKPOINT_NAME));
      expect(JSON.parse(file.metadata.lora_trainer_state!).hooks).toEqual({ 'test.ema': { tensors: ['ema'], json: { count: 2 } } });
      expect(file.tensors.get('hook.test.ema.ema')?.shape).toEqual([2, 8]);
      const run = setUp();
      const result = await train(options(run, { checkpoint }));
      expect(result.startStep).toBe(2);
      expect(run.hook.restoredFrom).toEqual([path.join(checkpoint.directory, TRAINER_CHECKPOINT_NAME)]);
      // Bit-identical: same float32 operations in the same order from the same stored bits.
      expect(run.hook.count).toBe(expected.count);
      expect(run.hook.emaValues()).toEqual(expected.ema);
      expect(run.model.namedTrainableVariables().map(([, v]) => Array.from(v.dataSync()))).toEqual(expected.weights);
      run.dispose();
    });
  });

  it('leaves the hook state of the old or the new checkpoint, whole, at every kill point of a checkpoint write', async () => {
    await withoutTensorLeaks(async () => {
      const expected = await straight(4);
      const counted = setUp();
      const once = await runUntilKilled(() => train(options(counted, { steps: 1, checkpoint: { directory: path.join(root, 'count'), every: 1 } })), () => false);
      counted.dispose();
      const perCheckpoint = once.points.filter((point) => point.operation !== 'train-step').length;
      expect(perCheckpoint).toBeGreaterThanOrEqual(5);
      for (let kill = 0; kill < perCheckpoint; kill++) {
        const checkpoint = { directory: path.join(root, `kill-${kill}`), every: 1 };
        const killed = setUp();
        let writes = 0;
        let seen = 0;
        // Kill at the kill-th file-system step of the second checkpoint write (step 2's, replacing step 1's).
        const run = await runUntilKilled(() => train(options(killed, { steps: 4, checkpoint })), (point) => {
          if (point.operation === 'mkdir') writes += 1;
          if (writes < 2 || point.operation === 'train-step') return false;
          return seen++ === kill;
        });
        killed.dispose();
        expect(run.killed).toBe(true);
        const file = await readSafetensorsFile(path.join(checkpoint.directory, TRAINER_CHECKPOINT_NAME));
        const stored = JSON.parse(file.metadata.lora_trainer_state!) as { step: number; hooks: Record<string, { json: { count: number } }> };
        // The hook's count always belongs to the step the file says.
        expect([1, 2]).toContain(stored.step);
        expect(stored.hooks['test.ema']!.json.count).toBe(stored.step);
        const resumed = setUp();
        expect((await train(options(resumed, { steps: 4, checkpoint }))).startStep).toBe(stored.step);
        expect(resumed.hook.count).toBe(4);
        expect(resumed.hook.emaValues()).toEqual(expected.ema);
        resumed.dispose();
      }
    });
  });

  it('restores hooks before the weights and optimizer state, and trains the variables a hook rebuilt', async () => {
    await withoutTensorLeaks(async () => {
      const resizing = (module: Resizable): TrainingHooks => ({
        checkpoint: { key: 'test.resize', state: () => ({ tensors: {}, json: { length: module.length } }), restore: (state) => module.resize((state.json as { length: number }).length) },
      });
      const run = (module: Resizable, checkpoint?: { directory: string; every: number }) =>
        train({ model: module, hooks: [resizing(module)], trainData: [0], steps: 5, learningRate: 0.1, checkpoint,
          lossFn: () => tf.tidy(() => tf.sum(tf.square(tf.sub(module.getOwnParameter('w')!, 2))) as tf.Scalar) });
      // The run that wrote the checkpoint had grown its parameter to 5 before training; a fresh module has 3.
      const straight = new Resizable(3);
      straight.resize(5);
      await run(straight);
      const expected = Array.from(straight.getOwnParameter('w')!.dataSync());
      straight.dispose();
      const checkpoint = { directory: path.join(root, 'resized'), every: 1 };
      const killed = new Resizable(3);
      killed.resize(5);
      expect((await runUntilKilled(() => run(killed, checkpoint), (point) => point.operation === 'train-step' && point.path === '4')).killed).toBe(true);
      killed.dispose();
      const resumed = new Resizable(3);
      expect((await run(resumed, checkpoint)).startStep).toBe(2);
      expect(resumed.length).toBe(5);
      expect(Array.from(resumed.getOwnParameter('w')!.dataSync())).toEqual(expected);
      resumed.dispose();
    });
  });

  it('rolls the state back with the weights when training diverges, and checkpoints the two together', async () => {
    await withoutTensorLeaks(async () => {
      const expected = await straight(2);
      const checkpoint = { directory: path.join(root, 'diverged'), every: 100 };
      const run = setUp();
      let calls = 0;
      // The loss of step 4 is NaN: the weights after step 3 are not good; the kept state is step 2's.
      const poisoned = (batch: Batch) => tf.tidy(() => tf.add(options(run).lossFn(batch), ++calls === 4 ? Number.NaN : 0) as tf.Scalar);
      const error = await train(options(run, { checkpoint, lossFn: poisoned })).catch((caught: unknown) => caught);
      expect(error).toMatchObject({ reason: 'non-finite-loss', keptStep: 2, checkpointStep: 2 });
      expect(run.hook.count).toBe(2);
      expect(run.hook.emaValues()).toEqual(expected.ema);
      const file = await readSafetensorsFile(path.join(checkpoint.directory, TRAINER_CHECKPOINT_NAME));
      expect(JSON.parse(file.metadata.lora_trainer_state!).hooks['test.ema'].json).toEqual({ count: 2 });
      run.dispose();
    });
  });

  it('refuses, in one line naming the file and the field, a checkpoint without the state of one of the run\'s hooks', async () => {
    await withoutTensorLeaks(async () => {
      const checkpoint = await killedCheckpoint('written-without', false);
      const error = await resumeError(checkpoint);
      expect(error).toBeInstanceOf(CheckpointError);
      expect(error.message).not.toContain('\n');
      expect(error.message).toBe(
        `[@lora/core] Cannot resume from ${path.join(checkpoint.directory, TRAINER_CHECKPOINT_NAME)}: metadata lora_trainer_state.hooks["test.ema"] should be the state of training hook "test.ema", found none (the run that wrote it did not save it). It was written by another version or for another setup; delete it to start over.`,
      );
      expect((error as CheckpointError).missing).toEqual(['test.ema']);
    });
  });

  it('refuses a checkpoint with state for a hook the run does not have', async () => {
    await withoutTensorLeaks(async () => {
      const checkpoint = await killedCheckpoint('extra-state');
      const error = await resumeError(checkpoint, () => []);
      expect(error).toBeInstanceOf(CheckpointError);
      expect(error.message).toMatch(/^\[@lora\/core\] Cannot resume from \S+trainer_checkpoint\.safetensors: metadata lora_trainer_state\.hooks should be states for this run's hooks only \(\[\]\), found state for \[test\.ema\]\. .*delete it to start over\.$/u);
      expect((error as CheckpointError).unexpected).toEqual(['test.ema']);
    });
  });

  it('refuses a checkpoint whose listed hook tensor is missing, and passes on the hook\'s own error for state that does not fit it', async () => {
    await withoutTensorLeaks(async () => {
      const missing = await killedCheckpoint('missing-tensor');
      const file = await rewrite(missing, ({ tensors }) => tensors.delete('hook.test.ema.ema'));
      const error = await resumeError(missing);
      expect(error).toBeInstanceOf(CheckpointError);
      expect(error.message).toBe(
        `[@lora/core] Cannot resume from ${file}: tensor "hook.test.ema.ema" should be present (listed in metadata lora_trainer_state.hooks["test.ema"]), found no such tensor. It was written by another version or for another setup; delete it to start over.`,
      );

      const damaged = await killedCheckpoint('damaged-json');
      const damagedFile = await rewrite(damaged, ({ metadata }) => {
        const state = JSON.parse(metadata.lora_trainer_state!);
        state.hooks['test.ema'].json = { count: 'two' };
        metadata.lora_trainer_state = JSON.stringify(state);
      });
      const hookError = await resumeError(damaged);
      expect(hookError).toBeInstanceOf(CheckpointError);
      expect(hookError.message).toBe(`[test] Cannot resume from ${damagedFile}: count should be an integer, found "two".`);

      const notAnObject = await killedCheckpoint('hooks-not-object');
      await rewrite(notAnObject, ({ metadata }) => {
        metadata.lora_trainer_state = JSON.stringify({ ...JSON.parse(metadata.lora_trainer_state!), hooks: [1] });
      });
      expect((await resumeError(notAnObject)).message).toMatch(/metadata lora_trainer_state\.hooks should be an object of hook states by key, found \[1\]\./u);
    });
  });

  it('writes no checkpoint holding a non-finite hook tensor, keeping the previous one', async () => {
    await withoutTensorLeaks(async () => {
      const run = setUp();
      const checkpoint = { directory: path.join(root, 'non-finite-state'), every: 1 };
      const hooks = run.hook.hooks();
      // From the second step on, the hook's state is NaN (a bug in the hook, not in training).
      const broken: TrainingHooks = {
        ...hooks,
        checkpoint: { ...hooks.checkpoint!, state: () => (run.hook.count >= 2 ? { tensors: { ema: tf.fill([2], Number.NaN) }, json: null } : hooks.checkpoint!.state()) },
      };
      const error = await train(options(run, { checkpoint, hooks: [broken] })).catch((caught: unknown) => caught);
      expect(error).toBeInstanceOf(TrainingError);
      expect((error as Error).message).toBe(
        '[@lora/core] train: training hook "test.ema" gave state tensor "ema" with 2 non-finite values (first: NaN); the checkpoint was not written and the previous one is kept. The hook\'s state must be finite.',
      );
      const file = await readSafetensorsFile(path.join(checkpoint.directory, TRAINER_CHECKPOINT_NAME));
      expect(JSON.parse(file.metadata.lora_trainer_state!)).toMatchObject({ step: 1, hooks: { 'test.ema': { json: { count: 1 } } } });
      run.dispose();
    });
  });

  it('rejects hooks whose checkpoint keys collide or are not names, before training', async () => {
    await withoutTensorLeaks(async () => {
      const run = setUp();
      const duplicate = await train(options(run, { hooks: [run.hook.hooks(), new EmaHook(run.hook.variable).hooks()] })).catch((caught: unknown) => caught);
      expect(duplicate).toBeInstanceOf(TrainingError);
      expect((duplicate as Error).message).toMatch(/two training hooks use checkpoint\.key "test\.ema"/u);
      const invalid = await train(options(run, { hooks: [new EmaHook(run.hook.variable, 'a/b').hooks()] })).catch((caught: unknown) => caught);
      expect((invalid as Error).message).toMatch(/checkpoint\.key must be letters, digits, '\.', '_' or '-', got "a\/b"/u);
      expect(run.hook.count).toBe(0);
      run.dispose();
    });
  });
});
