import * as tf from '@tensorflow/tfjs-core';
import { AdamW, initRuntime } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { resolveCondition } from '../src/index.js';
import { createHyperModel, LANGUAGES, randomizeGenerator, withCondition } from './helpers.js';

beforeAll(async () => {
  await initRuntime();
});

const EN_FR = { src: 'en', tgt: 'fr' };
const FR_DE = { src: 'fr', tgt: 'de' };

describe('GeneratedAdapterCache (through HyperLoraState)', () => {
  it('returns the identical cached tensors on a hit, equal to a fresh generation, without running the generator', async () => {
    await withoutTensorLeaks(() => {
      const hyper = createHyperModel();
      randomizeGenerator(hyper.state);
      hyper.model.eval();
      const x = tf.randomNormal([2, 3, 6], 0, 1, 'float32', 41);
      const M = hyper.state.plan.targets.length;
      const rows0 = hyper.state.generator.rowsGenerated;
      const [first, firstFactors] = withCondition(hyper, EN_FR, () => [hyper.model.forward(x), hyper.state.factorsFor(1)] as const);
      expect(hyper.state.generator.rowsGenerated - rows0).toBe(M);
      const [second, secondFactors] = withCondition(hyper, EN_FR, () => [hyper.model.forward(x), hyper.state.factorsFor(1)] as const);
      expect(hyper.state.generator.rowsGenerated - rows0).toBe(M);
      expect(secondFactors.a).toBe(firstFactors.a);
      expect(secondFactors.b).toBe(firstFactors.b);
      expect(Array.from(second.dataSync())).toEqual(Array.from(first.dataSync()));
      const fresh = tf.tidy(() => hyper.state.generator.generate(hyper.state.encoder.encode([resolveCondition(LANGUAGES, EN_FR)]))[1]!.b);
      expect(Array.from(secondFactors.b.dataSync())).toEqual(Array.from(fresh.dataSync()));
      const stats = hyper.state.cacheStats();
      expect([stats.hits, stats.misses, stats.entries]).toEqual([1, 1, 1]);
      tf.dispose([x, first, second, fresh]);
      hyper.dispose();
    });
  });

  it('serves a mixed batch from per-condition entries', async () => {
    await withoutTensorLeaks(() => {
      const hyper = createHyperModel();
      randomizeGenerator(hyper.state);
      hyper.model.eval();
      const x = tf.randomNormal([3, 6], 0, 1, 'float32', 42);
      tf.dispose(withCondition(hyper, [EN_FR, FR_DE, EN_FR], () => hyper.model.forward(x)));
      const rows = hyper.state.generator.rowsGenerated;
      tf.dispose(withCondition(hyper, FR_DE, () => hyper.model.forward(x)));
      tf.dispose(withCondition(hyper, [FR_DE, EN_FR, EN_FR], () => hyper.model.forward(x)));
      expect(hyper.state.generator.rowsGenerated).toBe(rows);
      expect(hyper.state.cacheStats().entries).toBe(2);
      tf.dispose(x);
      hyper.dispose();
    });
  });

  it('is invalidated by an optimizer step, and regenerates with the new weights', async () => {
    await withoutTensorLeaks(() => {
      const hyper = createHyperModel();
      const x = tf.randomNormal([2, 3, 6], 0, 1, 'float32', 43);
      const target = tf.randomNormal([2, 3, 3], 0, 1, 'float32', 44);
      hyper.model.eval();
      const before = withCondition(hyper, EN_FR, () => hyper.model.forward(x));
      expect(hyper.state.cacheStats().entries).toBe(1);
      // One training step as core's train() runs it: gradients, optimizer step, then the afterStep hooks.
      hyper.model.train();
      const variables = hyper.state.namedTensors().map(([, variable]) => variable);
      const { value, grads } = tf.variableGrads(
        () => withCondition(hyper, EN_FR, () => tf.mean(tf.square(tf.sub(hyper.model.forward(x), target)))) as tf.Scalar,
        variables,
      );
      const optimizer = new AdamW({ learningRate: 0.05 });
      const gradients = new Map(variables.map((variable) => [variable, grads[variable.name]!] as const));
      optimizer.applyGradients(gradients);
      hyper.state.trainingHooks().afterStep!({ step: 1, gradients });
      expect(hyper.state.cacheStats().entries).toBe(0);
      expect(hyper.state.cacheStats().invalidations).toBe(1);
      hyper.model.eval();
      const rows = hyper.state.generator.rowsGenerated;
      const after = withCondition(hyper, EN_FR, () => hyper.model.forward(x));
      expect(hyper.state.generator.rowsGenerated).toBeGreaterThan(rows);
      expect(tf.tidy(() => tf.max(tf.abs(tf.sub(after, before))).dataSync()[0]!)).toBeGreaterThan(1e-5);
      optimizer.dispose();
      tf.dispose([x, target, before, after, value, ...Object.values(grads)]);
      hyper.dispose();
    });
  });

  it('stays within its byte budget, evicting the least recently used condition', async () => {
    await withoutTensorLeaks(() => {
      // One condition's factors: 2 layers × (q: 2·6 + 5·2, v: 2·5 + 6·2) floats = 88 floats = 352 bytes.
      const hyper = createHyperModel({ cacheBytes: 2 * 352 });
      hyper.model.eval();
      const x = tf.randomNormal([2, 6], 0, 1, 'float32', 45);
      for (const condition of [EN_FR, FR_DE, EN_FR, { src: 'de' }]) tf.dispose(withCondition(hyper, condition, () => hyper.model.forward(x)));
      const stats = hyper.state.cacheStats();
      expect(stats.bytes).toBeLessThanOrEqual(stats.budgetBytes);
      expect([stats.entries, stats.evictions, stats.hits]).toEqual([2, 1, 1]);
      // FR_DE was least recently used, so it went; EN_FR is still a hit.
      const rows = hyper.state.generator.rowsGenerated;
      tf.dispose(withCondition(hyper, EN_FR, () => hyper.model.forward(x)));
      expect(hyper.state.generator.rowsGenerated).toBe(rows);
      tf.dispose(x);
      hyper.dispose();
    });
  });
});
