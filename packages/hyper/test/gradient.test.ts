import * as tf from '@tensorflow/tfjs-core';
import { initRuntime } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { createHyperModel, randomizeGenerator, tinyConfig, withCondition } from './helpers.js';

beforeAll(async () => {
  await initRuntime();
});

const ROWS = [{ src: 'en', tgt: 'fr' }, { src: 'fr', tgt: 'de' }, { src: 'en', tgt: 'fr' }, { tgt: 'de' }];

/**
 * Central differences, (L(θ + ε) − L(θ − ε)) / 2ε with ε = 1e-2, in float32 against the analytic
 * gradient from tfjs's autograd through the generator, the per-row gather and the model. The loss
 * is smooth (tanh, SiLU, LayerNorm) and about 1 in size, so truncation error is O(ε²)·|L'''| and
 * rounding O(1e-7/ε): the stated tolerance is |fd − g| ≤ 2e-3 + 2e-2·|g|.
 */
describe('HyperLoRA gradients (finite differences)', () => {
  for (const headMode of ['full', 'basis', 'diag'] as const) {
    it(`match central differences through the generator and the per-row gather (${headMode})`, async () => {
      await withoutTensorLeaks(() => {
        const hyper = createHyperModel({ config: tinyConfig({ headMode }), cacheBytes: 0 });
        randomizeGenerator(hyper.state, 300, 0.4);
        const x = tf.randomNormal([ROWS.length, 2, 6], 0, 1, 'float32', 31);
        const weights = tf.randomNormal([ROWS.length, 2, 3], 0, 1, 'float32', 32);
        const loss = (): tf.Scalar => withCondition(hyper, ROWS, () => tf.sum(tf.mul(hyper.model.forward(x), weights))) as tf.Scalar;
        const named = hyper.state.namedTensors();
        const { value, grads } = tf.variableGrads(loss, named.map(([, variable]) => variable));
        value.dispose();
        let checked = 0;
        let nonZero = 0;
        for (const [key, variable] of named) {
          const gradient = grads[variable.name]!.dataSync();
          const values = variable.dataSync().slice();
          // Up to three entries per variable, spread over it.
          const picks = [...new Set([0, Math.floor(values.length / 2), values.length - 1])];
          for (const index of picks) {
            const epsilon = 1e-2;
            const at = (delta: number): number => {
              const shifted = values.slice();
              shifted[index] = values[index]! + delta;
              tf.tidy(() => variable.assign(tf.tensor(shifted, variable.shape)));
              return tf.tidy(() => loss().dataSync()[0]!);
            };
            const numeric = (at(epsilon) - at(-epsilon)) / (2 * epsilon);
            tf.tidy(() => variable.assign(tf.tensor(values, variable.shape)));
            const analytic = gradient[index]!;
            const excess = Math.abs(numeric - analytic) - (2e-3 + 2e-2 * Math.abs(analytic));
            expect(excess, `${key}[${index}]: numeric ${numeric} vs analytic ${analytic}`).toBeLessThanOrEqual(0);
            checked += 1;
            if (Math.abs(analytic) > 1e-3) nonZero += 1;
          }
        }
        // The check covers the condition tables, embeddings, trunk and heads, most with real gradients.
        expect(checked).toBeGreaterThan(20);
        expect(nonZero).toBeGreaterThan(checked / 2);
        tf.dispose([x, weights, ...Object.values(grads)]);
        hyper.dispose();
      });
    });
  }
});
