import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  AdapterModel,
  causalLmLoss,
  classificationLoss,
  createLoraRegistry,
  evaluate,
  evaluateAsync,
  initRuntime,
  learningRateAt,
  lora,
  train,
  TrainingError,
  AdamW,
  countNonFinite,
  readCheckpointStep,
  readSafetensorsFile,
  TRAINER_CHECKPOINT_NAME,
  float32Moments,
  type MomentEncoding,
  type SafetensorsEntry,
  type TrainOptimizer,
} from '../src/index.js';
import { runUntilKilled } from '../src/testing.js';
import { Gpt2ShapedTree, randomValues } from './helpers.js';

interface Batch {
  readonly x: tf.Tensor;
  readonly y: tf.Tensor;
}

function makeData(count: number, seed: number): Batch[] {
  const teacher = new Gpt2ShapedTree({ width: 16, seed: 500 });
  teacher.eval();
  const batches = Array.from({ length: count }, (_, i) => {
    const x = tf.randomNormal([4, 3, 16], 0, 1, 'float32', seed + i);
    return { x, y: teacher.forward(x) };
  });
  teacher.dispose();
  return batches;
}

function setUp(): AdapterModel<Gpt2ShapedTree> {
  const registry = createLoraRegistry({ plugins: [lora({ seed: 3 })] });
  return AdapterModel.create(new Gpt2ShapedTree({ width: 16, seed: 1 }), { registry, config: { r: 4, loraAlpha: 8, targetModules: ['c_attn', 'c_proj'] } });
}

const mse = (model: Gpt2ShapedTree) => (batch: Batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(model.forward(batch.x), batch.y))) as tf.Scalar);

describe('train', () => {
  let data: Batch[];
  let directory: string;
  beforeAll(async () => {
    await initRuntime();
    data = makeData(4, 100);
    directory = await mkdtemp(path.join(tmpdir(), 'lora-trainer-'));
  });
  afterAll(async () => {
    tf.dispose(data.flatMap((b) => [b.x, b.y]));
    await rm(directory, { recursive: true, force: true });
  });

  it('refuses a loss that is not a scalar or does not reach the trainable variables with a TrainingError, leaking nothing', async () => {
    const adapterModel = setUp();
    // One forward first: layers cache what they derive from frozen weights (e.g. a transposed copy) on their first call.
    tf.tidy(() => adapterModel.model.forward(data[0]!.x));
    const before = tf.memory().numTensors;
    const notScalar = (batch: Batch) => tf.square(tf.sub(adapterModel.model.forward(batch.x), batch.y)) as unknown as tf.Scalar;
    const error = await train({ model: adapterModel.model, lossFn: notScalar, trainData: data, steps: 1 }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(TrainingError);
    expect((error as Error).message).toBe('[@lora/core] train: lossFn must return a scalar, got a tensor of shape [4, 3, 17]. Reduce it, e.g. with tf.mean.');
    expect(tf.memory().numTensors).toBe(before);
    // Merged adapters: the forward pass no longer runs through the trainable factors.
    adapterModel.merge();
    const merged = await train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 1 }).catch((caught: unknown) => caught);
    expect(merged).toBeInstanceOf(TrainingError);
    expect((merged as Error).message).toMatch(/^\[@lora\/core\] train: the loss does not depend on any trainable variable\. Are the adapters merged \(call unmerge\(\)\)/u);
    adapterModel.unmerge();
    expect(tf.memory().numTensors).toBe(before);
    // A lossFn that throws after its forward pass (a shape check of the user's, say): its error, and
    // nothing the forward pass saved for the backward pass left behind (it leaked 15 tensors).
    const late = new RangeError('the user\'s own check');
    for (const accumulation of [1, 2]) {
      // With accumulation, the first micro-batch's gradients are kept when the second one throws.
      let calls = 0;
      const throwing = (batch: Batch) => {
        const loss = mse(adapterModel.model)(batch);
        calls += 1;
        if (calls === accumulation) throw late;
        return loss;
      };
      const caught = await train({ model: adapterModel.model, lossFn: throwing, trainData: data, steps: 1, gradientAccumulationSteps: accumulation }).catch((e: unknown) => e);
      expect(caught).toBe(late);
      expect(tf.memory().numTensors).toBe(before);
    }
    adapterModel.dispose();
  });

  it('reads every step\'s values asynchronously (no synchronous read, which stalls a GPU backend), evaluations included', async () => {
    const adapterModel = setUp();
    const synchronous = vi.spyOn(tf.Tensor.prototype, 'dataSync');
    const asynchronous = vi.spyOn(tf.Tensor.prototype, 'data');
    try {
      // mse reads nothing itself: every read is the trainer's.
      const result = await train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, evalData: data.slice(0, 2), evalEvery: 1, steps: 3 });
      expect(result.losses).toHaveLength(3);
      expect(result.evalLosses).toHaveLength(3);
      expect(synchronous).not.toHaveBeenCalled();
      // Per step: the loss, the gradient norm, the updated weights' finiteness, an evaluation; then the final weights' loss.
      expect(asynchronous.mock.calls.length).toBe(3 * 4 + 1);
    } finally {
      synchronous.mockRestore();
      asynchronous.mockRestore();
    }
    // The evaluation train ran is evaluate's: the same mean of the batches' losses.
    expect(evaluate(adapterModel.model, mse(adapterModel.model), data.slice(0, 2))).toBeCloseTo(
      (tf.tidy(() => mse(adapterModel.model)(data[0]!).dataSync()[0]!) + tf.tidy(() => mse(adapterModel.model)(data[1]!).dataSync()[0]!)) / 2,
      12,
    );
    // evaluateAsync: evaluate's value to the bit, read asynchronously only, the model's mode restored.
    const reads = vi.spyOn(tf.Tensor.prototype, 'dataSync');
    adapterModel.model.train();
    try {
      const value = await evaluateAsync(adapterModel.model, mse(adapterModel.model), data.slice(0, 2));
      expect(reads).not.toHaveBeenCalled();
      expect(value).toBe(evaluate(adapterModel.model, mse(adapterModel.model), data.slice(0, 2)));
      expect(adapterModel.model.training).toBe(true);
    } finally {
      reads.mockRestore();
    }
    const notScalar = (batch: Batch) => tf.square(tf.sub(adapterModel.model.forward(batch.x), batch.y)) as unknown as tf.Scalar;
    const before = tf.memory().numTensors;
    expect(() => evaluate(adapterModel.model, notScalar, data)).toThrow(
      new TrainingError('[@lora/core] evaluate: lossFn must return a scalar, got a tensor of shape [4, 3, 17] for batch 0. Reduce it, e.g. with tf.mean.'),
    );
    await expect(evaluateAsync(adapterModel.model, notScalar, data)).rejects.toThrow(TrainingError);
    expect(tf.memory().numTensors).toBe(before);
    adapterModel.dispose();
  });

  it('lowers the loss, changes only adapter variables and keeps the tensor count constant over 50 steps', async () => {
    const adapterModel = setUp();
    const frozen = adapterModel.model.namedParameters().filter(([, v]) => !v.trainable).map(([name, v]) => [name, v.dataSync().slice()] as const);
    const trainable = adapterModel.model.namedParameters().filter(([, v]) => v.trainable).map(([name, v]) => [name, v.dataSync().slice()] as const);
    const counts: number[] = [];
    const before = tf.memory().numTensors;
    const result = await train({
      model: adapterModel.model,
      lossFn: mse(adapterModel.model),
      trainData: data,
      steps: 50,
      learningRate: 1e-2,
      onProgress: () => counts.push(tf.memory().numTensors),
    });
    expect(tf.memory().numTensors).toBe(before);
    expect(new Set(counts).size).toBe(1);
    expect(counts).toHaveLength(50);
    const firstLoss = result.losses.slice(0, 4).reduce((a, b) => a + b) / 4;
    const lastLoss = result.losses.slice(-4).reduce((a, b) => a + b) / 4;
    expect(lastLoss).toBeLessThan(firstLoss * 0.7);
    const now = new Map(adapterModel.model.namedParameters());
    for (const [name, values] of frozen) expect(Buffer.from(now.get(name)!.dataSync().buffer).equals(Buffer.from(values.buffer))).toBe(true);
    expect(trainable.every(([name]) => name.includes('lora_'))).toBe(true);
    expect(trainable.some(([name, values]) => !Buffer.from(now.get(name)!.dataSync().buffer).equals(Buffer.from(values.buffer)))).toBe(true);
    adapterModel.dispose();
  });

  it('averages accumulated gradients like one large batch', async () => {
    const big: Batch = { x: tf.concat([data[0]!.x, data[1]!.x]), y: tf.concat([data[0]!.y, data[1]!.y]) };
    const one = setUp();
    await train({ model: one.model, lossFn: mse(one.model), trainData: [big], steps: 1, learningRate: 1e-2 });
    const two = setUp();
    await train({ model: two.model, lossFn: mse(two.model), trainData: [data[0]!, data[1]!], steps: 1, learningRate: 1e-2, gradientAccumulationSteps: 2 });
    const a = one.model.namedParameters().filter(([n]) => n.includes('lora_A'));
    const b = new Map(two.model.namedParameters());
    for (const [name, variable] of a) {
      const x = variable.dataSync();
      const y = b.get(name)!.dataSync();
      for (let i = 0; i < x.length; i++) expect(Math.abs(x[i]! - y[i]!)).toBeLessThan(1e-6);
    }
    tf.dispose([big.x, big.y]);
    one.dispose();
    two.dispose();
  });

  it('resumes from a checkpoint to the same weights as an uninterrupted run', async () => {
    const straight = setUp();
    await train({ model: straight.model, lossFn: mse(straight.model), trainData: data, steps: 8, learningRate: 1e-2, schedule: 'cosine', warmupSteps: 2 });
    const checkpoint = { directory: path.join(directory, 'resume'), every: 2 };
    const interrupted = setUp();
    await train({ model: interrupted.model, lossFn: mse(interrupted.model), trainData: data, steps: 8, learningRate: 1e-2, schedule: 'cosine', warmupSteps: 2, checkpoint, onProgress: (e) => {
      if (e.step === 4) throw new Error('power cut');
    } }).catch((error: Error) => expect(error.message).toBe('power cut'));
    const resumed = setUp();
    const result = await train({ model: resumed.model, lossFn: mse(resumed.model), trainData: data, steps: 8, learningRate: 1e-2, schedule: 'cosine', warmupSteps: 2, checkpoint });
    expect(result.startStep).toBe(2);
    expect(result.losses).toHaveLength(6);
    const expected = new Map(straight.model.namedParameters());
    for (const [name, variable] of resumed.model.namedParameters()) {
      const x = variable.dataSync();
      const y = expected.get(name)!.dataSync();
      for (let i = 0; i < x.length; i++) expect(Math.abs(x[i]! - y[i]!)).toBeLessThan(1e-6);
    }
    straight.dispose();
    interrupted.dispose();
    resumed.dispose();
  });

  /** Weights of the trainable variables, by name, as bytes. */
  const weights = (model: Gpt2ShapedTree) =>
    new Map(model.namedParameters().filter(([, v]) => v.trainable).map(([name, v]) => [name, Buffer.from(v.dataSync().buffer.slice(0))] as const));
  const expectSameWeights = (actual: Map<string, Buffer>, expected: Map<string, Buffer>) => {
    expect([...actual.keys()]).toEqual([...expected.keys()]);
    for (const [name, bytes] of actual) expect(bytes.equals(expected.get(name)!), name).toBe(true);
  };
  const trainedFor = async (steps: number, extra: Partial<Parameters<typeof train<Batch>>[0]> = {}) => {
    const reference = setUp();
    await train({ model: reference.model, lossFn: mse(reference.model), trainData: data, steps, learningRate: 1e-2, ...extra });
    const result = weights(reference.model);
    reference.dispose();
    return result;
  };
  const expectCheckpointFinite = async (directory: string) => {
    const file = await readSafetensorsFile(path.join(directory, TRAINER_CHECKPOINT_NAME));
    for (const [name, entry] of file.tensors) expect(countNonFinite(entry).count, name).toBe(0);
  };

  it('stops on a non-finite loss before keeping the update, rolls back to the last state with a finite loss and checkpoints it', async () => {
    const adapterModel = setUp();
    const checkpoint = { directory: path.join(directory, 'nan'), every: 1 };
    let calls = 0;
    // The 3rd loss is NaN: the weights after step 2 gave it, so the last good state is after step 1.
    const lossFn = (batch: Batch) => {
      calls += 1;
      const loss = mse(adapterModel.model)(batch);
      return calls === 3 ? (tf.tidy(() => tf.div(loss, 0)) as tf.Scalar) : loss;
    };
    const before = tf.memory().numTensors;
    const caught = await train({ model: adapterModel.model, lossFn, trainData: data, steps: 10, learningRate: 1e-2, checkpoint }).catch((error: unknown) => error);
    expect(caught).toBeInstanceOf(TrainingError);
    expect(caught).toMatchObject({ step: 3, reason: 'non-finite-loss', keptStep: 1, checkpointStep: 1 });
    expect((caught as Error).message).toMatch(/^\[@lora\/core\] Training diverged at step 3: the loss is Infinity; the weights are those after step 1, checkpointed\./u);
    expect(tf.memory().numTensors).toBe(before);
    expect(await readCheckpointStep(checkpoint.directory)).toBe(1);
    await expectCheckpointFinite(checkpoint.directory);
    expectSameWeights(weights(adapterModel.model), await trainedFor(1));
    adapterModel.dispose();
  });

  it('keeps no diverged weights when the learning rate blows the update up, and rejects a non-finite learning rate', async () => {
    const adapterModel = setUp();
    const checkpoint = { directory: path.join(directory, 'huge-lr'), every: 1 };
    const caught = await train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 6, learningRate: 1e20, checkpoint }).catch((error: unknown) => error);
    expect(caught).toBeInstanceOf(TrainingError);
    const error = caught as TrainingError;
    expect(error.reason).toMatch(/^non-finite-/u);
    // Whatever the step, the kept weights are finite and give a finite loss.
    for (const [name, bytes] of weights(adapterModel.model)) {
      expect(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4).every(Number.isFinite), name).toBe(true);
    }
    adapterModel.model.eval();
    expect(Number.isFinite(tf.tidy(() => mse(adapterModel.model)(data[0]!).dataSync()[0]!))).toBe(true);
    if (error.checkpointStep !== null) await expectCheckpointFinite(checkpoint.directory);
    for (const learningRate of [Number.POSITIVE_INFINITY, Number.NaN, 0, -1]) {
      await expect(train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 1, learningRate })).rejects.toThrow(/learningRate must be a finite number > 0/u);
    }
    // Options that would otherwise run silently wrong: a negative clip flips the gradients, 0 stops learning, an unknown schedule ran as cosine.
    const common = { model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 1 };
    for (const maxGradNorm of [-1, 0, Number.NaN]) {
      await expect(train({ ...common, maxGradNorm })).rejects.toThrow(new RegExp(`maxGradNorm must be a number > 0 \\(Infinity or null: no clipping\\), got ${maxGradNorm}\\. Pass e\\.g\\. 1\\.0\\.`, 'u'));
    }
    for (const warmupSteps of [-5, 1.5]) await expect(train({ ...common, warmupSteps })).rejects.toThrow(/warmupSteps must be an integer >= 0/u);
    await expect(train({ ...common, schedule: 'bogus' as 'cosine' })).rejects.toThrow(/schedule must be one of 'constant', 'linear', 'cosine', got "bogus"\./u);
    const before = weights(adapterModel.model);
    await expect(train({ ...common, maxGradNorm: -1 })).rejects.toBeInstanceOf(TrainingError);
    expect(weights(adapterModel.model)).toEqual(before);
    adapterModel.dispose();
  });

  it('stops on a non-finite gradient norm with a finite loss, keeping the weights the loss was finite on', async () => {
    const adapterModel = setUp();
    const adapterA = adapterModel.model.namedParameters().find(([name]) => name.endsWith('lora_A.default.weight'))![1];
    let calls = 0;
    // sqrt(0·sum(A)) is 0, but its gradient is 0.5/0 · 0 = NaN.
    const lossFn = (batch: Batch) => {
      calls += 1;
      const loss = mse(adapterModel.model)(batch);
      return calls === 3 ? (tf.add(loss, tf.sqrt(tf.mul(tf.sum(adapterA), 0))) as tf.Scalar) : loss;
    };
    const caught = await train({ model: adapterModel.model, lossFn, trainData: data, steps: 5, learningRate: 1e-2 }).catch((error: unknown) => error);
    expect(caught).toMatchObject({ step: 3, reason: 'non-finite-gradient', keptStep: 2 });
    expectSameWeights(weights(adapterModel.model), await trainedFor(2));
    adapterModel.dispose();
  });

  it('puts the weights back when an update makes them non-finite', async () => {
    const adapterModel = setUp();
    const inner = new AdamW({ learningRate: 1e-2, weightDecay: 0 });
    const poisoned: TrainOptimizer = {
      get learningRate() {
        return inner.learningRate;
      },
      set learningRate(value: number) {
        inner.learningRate = value;
      },
      get step() {
        return inner.step;
      },
      set step(value: number) {
        inner.step = value;
      },
      applyGradients(gradients) {
        inner.applyGradients(gradients);
        if (inner.step === 3) {
          const [variable] = [...gradients.keys()];
          tf.tidy(() => variable!.assign(tf.fill(variable!.shape, Number.NaN)));
        }
      },
      stateEntries: (names) => inner.stateEntries(names),
      loadStateEntries: (entries, names) => inner.loadStateEntries(entries, names),
      dispose: () => inner.dispose(),
    };
    const caught = await train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 5, optimizer: poisoned }).catch((error: unknown) => error);
    expect(caught).toMatchObject({ step: 3, reason: 'non-finite-parameters', keptStep: 2 });
    expect(inner.step).toBe(2);
    expectSameWeights(weights(adapterModel.model), await trainedFor(2, { weightDecay: 0 }));
    inner.dispose();
    adapterModel.dispose();
  });

  it('leaves a whole checkpoint (old or new) at every kill point of a checkpoint write, and resumes from it bit-identically', async () => {
    const options = { trainData: data, steps: 4, learningRate: 1e-2, schedule: 'cosine' as const, warmupSteps: 1, seed: 11 };
    const expected = await trainedFor(4, options);
    // The file-system steps of one checkpoint write, counted on a run that checkpoints once.
    const counted = setUp();
    const once = await runUntilKilled(
      () => train({ ...options, model: counted.model, lossFn: mse(counted.model), steps: 1, checkpoint: { directory: path.join(directory, 'count'), every: 1 } }),
      () => false,
    );
    counted.dispose();
    const perCheckpoint = once.points.filter((point) => point.operation !== 'train-step').length;
    expect(perCheckpoint).toBeGreaterThanOrEqual(5);
    for (let kill = 0; kill < perCheckpoint; kill++) {
      const checkpoint = { directory: path.join(directory, `kill-${kill}`), every: 1 };
      const killed = setUp();
      let seen = 0;
      let checkpointsStarted = 0;
      // Kill at the kill-th step of the second checkpoint write (the one that replaces step 1's).
      const run = await runUntilKilled(
        () => train({ ...options, model: killed.model, lossFn: mse(killed.model), checkpoint }),
        (point) => {
          if (point.operation === 'mkdir') checkpointsStarted += 1;
          if (checkpointsStarted < 2 || point.operation === 'train-step') return false;
          return seen++ === kill;
        },
      );
      killed.dispose();
      expect(run.killed).toBe(true);
      const step = await readCheckpointStep(checkpoint.directory);
      expect([1, 2]).toContain(step);
      await expectCheckpointFinite(checkpoint.directory);
      const resumed = setUp();
      const result = await train({ ...options, model: resumed.model, lossFn: mse(resumed.model), checkpoint });
      expect(result.startStep).toBe(step);
      expectSameWeights(weights(resumed.model), expected);
      resumed.dispose();
    }
  });

  it('resumes bit-identically with dropout on when given the same seed, after a kill at a random step', async () => {
    // A fresh plugin each time: its seed counts up per adapter it creates.
    const make = () =>
      AdapterModel.create(new Gpt2ShapedTree({ width: 16, seed: 1 }), { registry: createLoraRegistry({ plugins: [lora({ seed: 3 })] }), config: { r: 4, loraAlpha: 8, loraDropout: 0.3, targetModules: ['c_attn', 'c_proj'] } });
    const options = { trainData: data, steps: 6, learningRate: 1e-2, seed: 5 };
    const straight = make();
    await train({ ...options, model: straight.model, lossFn: mse(straight.model) });
    const expected = weights(straight.model);
    straight.dispose();
    const unseeded = make();
    await train({ ...options, seed: undefined, model: unseeded.model, lossFn: mse(unseeded.model) });
    // Dropout is on: without the seed the run draws other masks.
    expect([...weights(unseeded.model)].some(([name, bytes]) => !bytes.equals(expected.get(name)!))).toBe(true);
    unseeded.dispose();
    const killStep = 2 + Math.floor(Math.random() * 4);
    const checkpoint = { directory: path.join(directory, `dropout-${killStep}`), every: 1 };
    const killed = make();
    const run = await runUntilKilled(() => train({ ...options, model: killed.model, lossFn: mse(killed.model), checkpoint }), (point) => point.operation === 'train-step' && point.path === String(killStep));
    killed.dispose();
    expect(run.killed).toBe(true);
    const resumed = make();
    const result = await train({ ...options, model: resumed.model, lossFn: mse(resumed.model), checkpoint });
    expect(result.startStep).toBeLessThan(killStep);
    expectSameWeights(weights(resumed.model), expected);
    resumed.dispose();
  });

  it('stops at the next step when aborted, checkpointing the current state', async () => {
    const adapterModel = setUp();
    const controller = new AbortController();
    const checkpoint = { directory: path.join(directory, 'abort'), every: 100 };
    const caught = await train({
      model: adapterModel.model,
      lossFn: mse(adapterModel.model),
      trainData: data,
      steps: 10,
      learningRate: 1e-2,
      checkpoint,
      signal: controller.signal,
      onProgress: (event) => {
        if (event.step === 3) controller.abort();
      },
    }).catch((error: unknown) => error);
    expect(caught).toMatchObject({ reason: 'interrupted', step: 4, keptStep: 3, checkpointStep: 3 });
    expect(await readCheckpointStep(checkpoint.directory)).toBe(3);
    expectSameWeights(weights(adapterModel.model), await trainedFor(3));
    adapterModel.dispose();
  });

  it('adds a plugin hook\'s extra loss inside the tape and calls the hooks around the optimizer step', async () => {
    const adapterModel = setUp();
    const events: string[] = [];
    const adapterA = adapterModel.model.namedParameters().find(([name]) => name.endsWith('lora_A.default.weight'))![1];
    let sawGradient = false;
    const result = await train({
      model: adapterModel.model,
      lossFn: mse(adapterModel.model),
      trainData: data,
      steps: 2,
      hooks: [
        {
          // A constant term shifts the reported loss by exactly 10 and a term on A changes its gradient.
          extraLoss: () => tf.tidy(() => tf.add(tf.scalar(10), tf.mul(tf.sum(adapterA), 0))) as tf.Scalar,
          afterBackward: ({ step, gradients }) => {
            events.push(`backward ${step}`);
            sawGradient ||= gradients.has(adapterA);
          },
          afterStep: ({ step }) => {
            events.push(`step ${step}`);
          },
        },
      ],
    });
    const plain = setUp();
    const reference = await train({ model: plain.model, lossFn: mse(plain.model), trainData: data, steps: 1 });
    expect(result.losses[0]! - reference.losses[0]!).toBeCloseTo(10, 4);
    expect(events).toEqual(['backward 1', 'step 1', 'backward 2', 'step 2']);
    expect(sawGradient).toBe(true);
    adapterModel.dispose();
    plain.dispose();
  });

  it('awaits hooks that return promises, in order, and frees the step’s gradients when a hook rejects', async () => {
    const adapterModel = setUp();
    const events: string[] = [];
    const later = (event: string) => new Promise<void>((resolve) => setTimeout(() => {
      events.push(event);
      resolve();
    }, 5));
    await train({
      model: adapterModel.model,
      lossFn: mse(adapterModel.model),
      trainData: data,
      steps: 2,
      hooks: [
        { afterBackward: ({ step }) => later(`backward ${step}`), afterStep: ({ step }) => later(`step ${step}`) },
        { afterStep: ({ step }) => void events.push(`second hook ${step}`) },
      ],
      onProgress: (event) => void events.push(`progress ${event.step}`),
    });
    expect(events).toEqual(['backward 1', 'step 1', 'second hook 1', 'progress 1', 'backward 2', 'step 2', 'second hook 2', 'progress 2']);
    const before = tf.memory().numTensors;
    let stepped = 0;
    await expect(
      train({
        model: adapterModel.model,
        lossFn: mse(adapterModel.model),
        trainData: data,
        steps: 3,
        hooks: [
          {
            afterStep: async ({ step }) => {
              stepped = step;
              await new Promise((resolve) => setTimeout(resolve, 1));
              if (step === 2) throw new Error('the hook failed');
            },
          },
        ],
      }),
    ).rejects.toThrow('the hook failed');
    expect(stepped).toBe(2);
    expect(tf.memory().numTensors).toBe(before);
    adapterModel.dispose();
  });

  it('uses a caller-owned optimizer and leaves it undisposed', async () => {
    const adapterModel = setUp();
    const { AdamW } = await import('../src/index.js');
    const optimizer = new AdamW({ learningRate: 1e-2, weightDecay: 0 });
    const viaOption = await train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 3, optimizer });
    expect(optimizer.step).toBe(3);
    const reference = setUp();
    const builtIn = await train({ model: reference.model, lossFn: mse(reference.model), trainData: data, steps: 3, learningRate: 1e-2 });
    expect(viaOption.losses).toEqual(builtIn.losses);
    optimizer.dispose();
    adapterModel.dispose();
    reference.dispose();
  });

  it('rejects bad options with a TrainingError', async () => {
    const adapterModel = setUp();
    await expect(train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 0 })).rejects.toThrow(/steps must be a positive integer/u);
    await expect(train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: [], steps: 1 })).rejects.toThrow(/no batches/u);
    // What an untyped (plain JavaScript) caller can pass: typed errors naming the option, not TypeErrors.
    const loose = train as unknown as (options: Record<string, unknown>) => Promise<unknown>;
    await expect(loose({ lossFn: mse(adapterModel.model), trainData: data, steps: 1 })).rejects.toThrow(
      /^\[@lora\/core\] train: model must be a Module or an AdapterModel, got undefined\.$/u,
    );
    await expect(loose({ model: adapterModel, trainData: data, steps: 1 })).rejects.toThrow(/train: lossFn must be a function from a batch to a scalar loss, got undefined\. Pass e\.g\./u);
    await expect(loose({ model: adapterModel, lossFn: mse(adapterModel.model), steps: 1 })).rejects.toThrow(/train: trainData must be an array of batches or \{ length, get\(index\) \}, got undefined\./u);
    await expect(loose({ model: adapterModel, lossFn: mse(adapterModel.model), trainData: data, evalData: { length: 2 }, steps: 1 })).rejects.toThrow(/train: evalData must be/u);
    await expect(loose({ model: adapterModel, lossFn: 'mse', trainData: data, steps: 1 })).rejects.toBeInstanceOf(TrainingError);
    adapterModel.model.setTrainable(false);
    await expect(train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 1 })).rejects.toThrow(/no trainable variables/u);
    adapterModel.dispose();
  });

  it('refuses optimizer options it would ignore, PyTorch spellings and non-numbers, and names the AdapterModel a wrapped model needs', async () => {
    const adapterModel = setUp();
    const optimizer = new AdamW({ learningRate: 1e-3 });
    await expect(train({ model: adapterModel, lossFn: mse(adapterModel.model), trainData: data, steps: 1, optimizer, weightDecay: 0.1, beta2: 0.99 })).rejects.toThrow(
      '[@lora/core] train: weightDecay, beta2 configure the AdamW train() creates, and an optimizer was given; set them on that optimizer instead (e.g. new AdamW({ weightDecay: … })).',
    );
    const loose = (options: Record<string, unknown>) => new AdamW(options as never);
    expect(() => loose({ lr: 0.1 })).toThrow(
      "[@lora/core] Invalid config: lr must be one of AdamW's options (learningRate, beta1, beta2, epsilon, weightDecay, momentEncoding, packageName), got 0.1. lr is PyTorch's name: pass { learningRate: 0.1 }.",
    );
    expect(() => loose({ betas: [0.9, 0.99] })).toThrow(/betas is PyTorch's name: pass \{ beta1: 0\.9, beta2: 0\.99 \}/u);
    expect(() => loose({ beta1: '0.9' })).toThrow(/beta1 must be a number, got "0\.9"/u);
    // A misspelt option would be ignored and its default run: refused too.
    expect(() => loose({ learningrate: 0.1 })).toThrow(/learningrate must be one of AdamW's options .* Remove it or fix its spelling\./u);
    expect(() => loose(null as never)).toThrow(/options must be an object, got null/u);
    // The model of an AdapterModel whose trainable variables are all adapter-level (frozen layers here).
    adapterModel.model.setTrainable(false);
    await expect(train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 1 })).rejects.toThrow(
      /no trainable variables of its own, and an AdapterModel wraps it: pass that as model \(train\(\{ model: adapterModel, … \}\)\)/u,
    );
    optimizer.dispose();
    adapterModel.dispose();
  });

  it('refuses to resume optimizer state of another layout, before any weight changes', async () => {
    const adapterModel = setUp();
    const checkpointDirectory = path.join(directory, 'other-optimizer');
    const options = { model: adapterModel, lossFn: mse(adapterModel.model), trainData: data, checkpoint: { directory: checkpointDirectory, every: 1 } };
    await train({ ...options, steps: 2 });
    // Moments stored under other keys (as an 8-bit optimizer's are): this encoding finds none of the file's.
    const renamed: MomentEncoding = {
      create(variable) {
        const inner = float32Moments.create(variable);
        return {
          ...inner,
          entries: (name) => inner.entries(name).map(([key, entry]) => [`other.${key}`, entry] as [string, SafetensorsEntry]),
          load: (entries, name) => inner.load(new Map([...entries].filter(([key]) => key.startsWith('other.')).map(([key, entry]) => [key.slice(6), entry])), name),
        };
      },
    };
    const weightsBefore = adapterModel.namedTrainableVariables().map(([, variable]) => variable.dataSync().slice());
    const other = new AdamW({ momentEncoding: renamed });
    await expect(train({ ...options, steps: 3, optimizer: other })).rejects.toThrow(
      /^\[@lora\/core\] The checkpoint .*trainer_checkpoint\.safetensors \(after 2 optimizer steps\) has no optimizer state "other\.adam_m\..*": it was written by another optimizer or with other settings\. Resume with the optimizer and settings it was written with/u,
    );
    adapterModel.namedTrainableVariables().forEach(([, variable], i) => expect(variable.dataSync()).toEqual(weightsBefore[i]));
    other.dispose();
    // The same optimizer resumes.
    await train({ ...options, steps: 3 });
    adapterModel.dispose();
  });

  it('refuses a checkpoint directory that is a file before any step, and says how to fix a checkpoint of another model', async () => {
    const adapterModel = setUp();
    const file = path.join(directory, 'not-a-directory');
    await writeFile(file, 'the user\'s file');
    let steps = 0;
    const options = { model: adapterModel, lossFn: mse(adapterModel.model), trainData: data, steps: 2, onProgress: () => (steps += 1) };
    for (const target of [file, path.join(file, 'below')]) {
      await expect(train({ ...options, checkpoint: { directory: target, every: 1 } })).rejects.toThrow(
        `[@lora/core] train: cannot use checkpoint.directory ${target}: it (or a folder above it) is a file. Pass a directory path (it is created when missing).`,
      );
    }
    expect(steps).toBe(0);
    expect(await readFile(file, 'utf8')).toBe('the user\'s file');
    // A checkpoint of rank 4 resumed by a rank-2 adapter.
    const checkpointDirectory = path.join(directory, 'other-shape');
    await train({ ...options, steps: 1, checkpoint: { directory: checkpointDirectory, every: 1 } });
    const registry = createLoraRegistry({ plugins: [lora({ seed: 3 })] });
    const other = AdapterModel.create(new Gpt2ShapedTree({ width: 16, seed: 1 }), { registry, config: { r: 2, loraAlpha: 8, targetModules: ['c_attn', 'c_proj'] } });
    await expect(train({ ...options, model: other, lossFn: mse(other.model), checkpoint: { directory: checkpointDirectory, every: 1 } })).rejects.toThrow(
      /it was written for another model or adapter\. Resume with the model and adapter config it was written for, pass resume: false to start over, or use another checkpoint\.directory\.$/u,
    );
    await train({ ...options, model: other, lossFn: mse(other.model), resume: false, checkpoint: { directory: checkpointDirectory, every: 1 } });
    other.dispose();
    adapterModel.dispose();
  });
});

describe('learningRateAt', () => {
  it('warms up linearly, then follows the schedule to zero', () => {
    const options = { baseLearningRate: 1, warmupSteps: 4, totalSteps: 14 };
    expect([0, 1, 2, 3].map((s) => learningRateAt(s, { ...options, schedule: 'constant' }))).toEqual([0.25, 0.5, 0.75, 1]);
    expect(learningRateAt(9, { ...options, schedule: 'linear' })).toBeCloseTo(0.5, 12);
    expect(learningRateAt(9, { ...options, schedule: 'cosine' })).toBeCloseTo(0.5, 12);
    expect(learningRateAt(14, { ...options, schedule: 'cosine' })).toBeCloseTo(0, 12);
    expect(learningRateAt(100, { ...options, schedule: 'constant' })).toBe(1);
  });
});

describe('losses', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('computes the shifted causal-LM cross-entropy as float64, ignoring -100 labels', () => {
    const [batch, time, vocab] = [2, 4, 5];
    const logits = randomValues(batch * time * vocab, 9, 3);
    const labels = [1, 4, 0, 2, 3, -100, 1, 1];
    let total = 0;
    let count = 0;
    for (let b = 0; b < batch; b++) for (let t = 0; t < time - 1; t++) {
      const label = labels[b * time + t + 1]!;
      if (label === -100) continue;
      const row = logits.slice((b * time + t) * vocab, (b * time + t + 1) * vocab);
      const max = Math.max(...row);
      const logSum = Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) + max;
      total += logSum - row[label]!;
      count += 1;
    }
    const loss = causalLmLoss(tf.tensor3d(logits, [batch, time, vocab]), tf.tensor2d(labels, [batch, time], 'int32'));
    expect(Math.abs(loss.dataSync()[0]! - total / count)).toBeLessThan(1e-5);
  });

  it.each(['wasm', 'cpu'])('computes the shifted causal-LM cross-entropy with an attention mask as float64 on %s', async (backend) => {
    await tf.setBackend(backend);
    const [batch, time, vocab] = [2, 5, 6];
    const logits = randomValues(batch * time * vocab, 11, 4);
    const labels = [1, 4, 0, 2, 5, 3, -100, 1, 1, 0];
    const mask = [1, 1, 1, 0, 0, 1, 0, 1, 1, 1];
    let total = 0;
    let count = 0;
    for (let b = 0; b < batch; b++) for (let t = 0; t < time - 1; t++) {
      const label = labels[b * time + t + 1]!;
      if (label === -100 || mask[b * time + t + 1] === 0) continue;
      const row = logits.slice((b * time + t) * vocab, (b * time + t + 1) * vocab);
      const max = Math.max(...row);
      total += Math.log(row.reduce((s, v) => s + Math.exp(v - max), 0)) + max - row[label]!;
      count += 1;
    }
    const loss = tf.tidy(() => causalLmLoss(tf.tensor3d(logits, [batch, time, vocab]), tf.tensor2d(labels, [batch, time], 'int32'), tf.tensor2d(mask, [batch, time], 'int32')));
    expect(count).toBe(5);
    expect(Math.abs(loss.dataSync()[0]! - total / count)).toBeLessThan(1e-5);
    loss.dispose();
    await tf.setBackend('wasm');
  });

  it('computes classification cross-entropy and rejects mismatched shapes', () => {
    const logits = tf.tensor2d([[2, 0], [0, 1]]);
    const expected = (Math.log(1 + Math.exp(-2)) + Math.log(1 + Math.exp(1))) / 2;
    expect(Math.abs(classificationLoss(logits, tf.tensor1d([0, 0], 'int32')).dataSync()[0]! - expected)).toBeLessThan(1e-6);
    expect(() => classificationLoss(logits, tf.tensor1d([0], 'int32'))).toThrow(/classificationLoss/u);
  });
});
