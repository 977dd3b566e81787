import * as tf from '@tensorflow/tfjs-core';
import { AdamW, initRuntime, type BaseLayer, type Module } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { QuantLinear, quant } from '@lora/quant';
import { beforeAll, describe, expect, it } from 'vitest';
import { createHyperModel, TinyModel, tinyConfig, withCondition, type HyperModel } from './helpers.js';

beforeAll(async () => {
  await initRuntime();
});

const CONDITIONS = [{ src: 'en', tgt: 'fr' }, { src: 'en', tgt: 'de' }, { src: 'fr', tgt: 'en' }];

/**
 * A task only a condition-dependent adapter can solve: the target of a row is the base model's
 * output plus a shift that depends on the row's condition.
 */
function makeTask(seed: number): { x: tf.Tensor; shifts: tf.Tensor2D; dispose(): void } {
  const x = tf.randomNormal([6, 2, 6], 0, 1, 'float32', seed);
  const shifts = tf.randomNormal([CONDITIONS.length, 3], 0, 0.5, 'float32', seed + 1) as tf.Tensor2D;
  return { x, shifts, dispose: () => tf.dispose([x, shifts]) };
}

/** Run `steps` AdamW steps on mixed-condition batches (row i has condition i mod 3), as core's train() does. */
function trainMixed(hyper: HyperModel, base: TinyModel, task: ReturnType<typeof makeTask>, steps: number, onStep?: (step: number, loss: number) => void): number[] {
  const rows = Array.from({ length: 6 }, (_, i) => i % CONDITIONS.length);
  const conditions = rows.map((i) => CONDITIONS[i]!);
  const targets = tf.tidy(() => tf.add(base.forward(task.x), tf.expandDims(tf.gather(task.shifts, rows), 1)));
  const variables = hyper.state.namedTensors().map(([, variable]) => variable);
  const optimizer = new AdamW({ learningRate: 0.02 });
  const losses: number[] = [];
  hyper.model.train();
  for (let step = 1; step <= steps; step++) {
    const { value, grads } = tf.variableGrads(
      () => withCondition(hyper, conditions, () => tf.mean(tf.square(tf.sub(hyper.model.forward(task.x), targets)))) as tf.Scalar,
      variables,
    );
    const gradients = new Map(variables.map((variable) => [variable, grads[variable.name]!] as const));
    optimizer.applyGradients(gradients);
    hyper.state.trainingHooks().afterStep!({ step, gradients });
    losses.push(value.dataSync()[0]!);
    tf.dispose([value, ...Object.values(grads)]);
    onStep?.(step, losses[losses.length - 1]!);
  }
  optimizer.dispose();
  targets.dispose();
  return losses;
}

describe('HyperLoRA training on mixed-condition batches', () => {
  it('learns condition-dependent shifts with no tensor growth over 50 steps', async () => {
    await withoutTensorLeaks(() => {
      const hyper = createHyperModel({ config: tinyConfig({ headMode: 'basis', conditionDropout: 0.1 }) });
      const base = new TinyModel(1);
      const task = makeTask(61);
      const counts: number[] = [];
      const losses = trainMixed(hyper, base, task, 50, () => counts.push(tf.memory().numTensors));
      // The optimizer's moments appear at step 1; from then on the count is flat.
      expect(new Set(counts.slice(1)).size).toBe(1);
      expect(losses.every(Number.isFinite)).toBe(true);
      expect(losses[losses.length - 1]!).toBeLessThan(0.3 * losses[0]!);
      expect(hyper.state.cacheStats().entries).toBe(0);
      task.dispose();
      base.dispose();
      hyper.dispose();
    });
  });
});

describe('HyperLoRA over a 4-bit base (@lora/quant)', () => {
  it('starts exactly at the quantized base, trains a float generator, and leaves the 4-bit weights unchanged', async () => {
    await withoutTensorLeaks(() => {
      const transform = quant({ type: 'nf4', blockSize: 64 });
      const hyper = createHyperModel({ config: tinyConfig({ headMode: 'basis' }), transform });
      const quantizedBase = createHyperModel({ transform });
      const bases = hyper.model.namedModules().filter(([, module]) => module instanceof QuantLinear) as [string, Module & BaseLayer][];
      expect(bases.length).toBe(4);
      const dequantized = (): number[][] =>
        bases.map(([, module]) => {
          const weight = (module as QuantLinear).denseWeight();
          const values = Array.from(weight.dataSync());
          weight.dispose();
          return values;
        });
      const before = dequantized();
      const task = makeTask(71);
      // Exact start: the same output as the quantized model with its adapters switched off.
      const start = withCondition(hyper, CONDITIONS.concat(CONDITIONS), () => hyper.model.forward(task.x));
      for (const [, layer] of quantizedBase.model.namedModules()) if ('disabled' in layer) (layer as { disabled: boolean }).disabled = true;
      const reference = quantizedBase.model.forward(task.x);
      expect(Array.from(start.dataSync())).toEqual(Array.from(reference.dataSync()));
      const teacher = new TinyModel(1);
      const losses = trainMixed(hyper, teacher, task, 30);
      teacher.dispose();
      expect(losses[losses.length - 1]!).toBeLessThan(0.5 * losses[0]!);
      expect(dequantized()).toEqual(before);
      tf.dispose([start, reference]);
      task.dispose();
      quantizedBase.dispose();
      hyper.dispose();
    });
  });
});
