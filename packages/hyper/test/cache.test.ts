import * as tf from '@tensorflow/tfjs-core';
import { AdamW, AdapterModel, createLoraRegistry, initRuntime, lora } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { AdamW8bit } from '@lora/quant';
import { beforeAll, describe, expect, it } from 'vitest';
import { hyper, resolveCondition, type HyperLoraState } from '../src/index.js';
import { createHyperModel, LANGUAGES, randomizeGenerator, TinyModel, tinyConfig, withCondition } from './helpers.js';

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

/** The largest absolute difference between two tensors. */
function maxDifference(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

/**
 * Ways generator weights change outside `train()` (no afterStep hook, no invalidate()): optimizer
 * steps run by hand, and an assignment with no gradient tape anywhere.
 */
const UPDATES: readonly [string, (peft: AdapterModel<TinyModel>, x: tf.Tensor, target: tf.Tensor) => void][] = [
  ["3 steps of core's AdamW", (peft, x, target) => manualSteps(peft, x, target, new AdamW({ learningRate: 0.05 }))],
  ["3 steps of @lora/quant's AdamW8bit", (peft, x, target) => manualSteps(peft, x, target, new AdamW8bit({ learningRate: 0.05, minQuantizedSize: 0 }))],
  [
    'a plain variable.assign with no tape',
    (peft) => {
      const state = peft.adapterState('default') as HyperLoraState;
      for (const [key, variable] of state.namedTensors()) {
        if (key.includes('b_basis')) tf.tidy(() => variable.assign(tf.add(variable, tf.randomNormal(variable.shape, 0, 0.3, 'float32', 7))));
      }
    },
  ],
];

function manualSteps(peft: AdapterModel<TinyModel>, x: tf.Tensor, target: tf.Tensor, optimizer: AdamW): void {
  const variables = peft.namedTrainableVariables().map(([, variable]) => variable);
  for (let step = 0; step < 3; step++) {
    const { value, grads } = tf.variableGrads(
      () => peft.withAdapterInputs({ condition: EN_FR }, () => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(x), target))) as tf.Scalar)),
      variables,
    );
    optimizer.applyGradients(new Map(variables.map((variable) => [variable, grads[variable.name]!] as const)));
    tf.dispose([value, ...Object.values(grads)]);
  }
  optimizer.dispose();
}

describe('GeneratedAdapterCache never serves adapters of older weights', () => {
  for (const [label, update] of UPDATES) {
    it(`regenerates after ${label}, and hits again while the weights stay`, async () => {
      await withoutTensorLeaks(() => {
        const peft = AdapterModel.create(new TinyModel(1), { registry: createLoraRegistry({ plugins: [lora(), hyper({ seed: 9 })] }), plugin: 'hyper', config: tinyConfig() });
        const state = peft.adapterState('default') as HyperLoraState;
        const x = tf.randomNormal([2, 3, 6], 0, 1, 'float32', 46);
        const target = tf.randomNormal([2, 3, 3], 0, 1, 'float32', 47);
        // The audit's reproduction: eval, a forward fills the cache, weights change, forward again.
        peft.model.eval();
        const before = peft.forward({ condition: EN_FR }, x);
        update(peft, x, target);
        const after = peft.forward({ condition: EN_FR }, x);
        state.invalidate();
        const fresh = peft.forward({ condition: EN_FR }, x);
        expect(maxDifference(after, before)).toBeGreaterThan(1e-4);
        expect(Array.from(after.dataSync())).toEqual(Array.from(fresh.dataSync()));
        // Unchanged weights: served from the cache (the generator does not run).
        const rows = state.generator.rowsGenerated;
        const again = peft.forward({ condition: EN_FR }, x);
        expect(state.generator.rowsGenerated).toBe(rows);
        expect(Array.from(again.dataSync())).toEqual(Array.from(fresh.dataSync()));
        tf.dispose([x, target, before, after, fresh, again]);
        peft.dispose();
      });
    });
  }

  it('regenerates inside one withAdapterInputs that spans optimizer steps', async () => {
    await withoutTensorLeaks(() => {
      const peft = AdapterModel.create(new TinyModel(1), { registry: createLoraRegistry({ plugins: [lora(), hyper({ seed: 9 })] }), plugin: 'hyper', config: tinyConfig() });
      const x = tf.randomNormal([2, 3, 6], 0, 1, 'float32', 48);
      const target = tf.randomNormal([2, 3, 3], 0, 1, 'float32', 49);
      const variables = peft.namedTrainableVariables().map(([, variable]) => variable);
      const optimizer = new AdamW({ learningRate: 0.05 });
      const losses = peft.withAdapterInputs({ condition: EN_FR }, () => {
        const values: number[] = [];
        for (let step = 0; step < 4; step++) {
          const { value, grads } = tf.variableGrads(() => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(x), target))) as tf.Scalar), variables);
          // Every step gets gradients (the factors are generated on each step's tape, from its weights).
          expect(Object.values(grads).some((grad) => tf.tidy(() => tf.max(tf.abs(grad)).dataSync()[0]!) > 0)).toBe(true);
          optimizer.applyGradients(new Map(variables.map((variable) => [variable, grads[variable.name]!] as const)));
          values.push(value.dataSync()[0]!);
          tf.dispose([value, ...Object.values(grads)]);
        }
        return values;
      });
      expect(losses[3]!).toBeLessThan(losses[0]!);
      optimizer.dispose();
      tf.dispose([x, target]);
      peft.dispose();
    });
  });
});
