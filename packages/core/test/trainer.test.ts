import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  AdapterModel,
  causalLmLoss,
  classificationLoss,
  createLoraRegistry,
  initRuntime,
  learningRateAt,
  lora,
  train,
  TrainingError,
} from '../src/index.js';
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

  it('stops on a non-finite loss with a TrainingError naming the step and keeps the last checkpoint', async () => {
    const adapterModel = setUp();
    const checkpoint = { directory: path.join(directory, 'nan'), every: 1 };
    let calls = 0;
    const lossFn = (batch: Batch) => {
      calls += 1;
      const loss = mse(adapterModel.model)(batch);
      return calls === 3 ? (tf.tidy(() => tf.div(loss, 0)) as tf.Scalar) : loss;
    };
    const before = tf.memory().numTensors;
    let caught: unknown;
    try {
      await train({ model: adapterModel.model, lossFn, trainData: data, steps: 10, checkpoint });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(TrainingError);
    expect((caught as TrainingError).step).toBe(3);
    expect((caught as Error).message).toMatch(/step 3/u);
    expect(tf.memory().numTensors).toBe(before);
    const state = JSON.parse(await readFile(path.join(checkpoint.directory, 'trainer_state.json'), 'utf8')) as { step: number };
    expect(state.step).toBe(2);
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
          afterStep: ({ step }) => events.push(`step ${step}`),
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
    adapterModel.model.setTrainable(false);
    await expect(train({ model: adapterModel.model, lossFn: mse(adapterModel.model), trainData: data, steps: 1 })).rejects.toThrow(/no trainable variables/u);
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

  it('computes classification cross-entropy and rejects mismatched shapes', () => {
    const logits = tf.tensor2d([[2, 0], [0, 1]]);
    const expected = (Math.log(1 + Math.exp(-2)) + Math.log(1 + Math.exp(1))) / 2;
    expect(Math.abs(classificationLoss(logits, tf.tensor1d([0, 0], 'int32')).dataSync()[0]! - expected)).toBeLessThan(1e-6);
    expect(() => classificationLoss(logits, tf.tensor1d([0], 'int32'))).toThrow(/classificationLoss/u);
  });
});
