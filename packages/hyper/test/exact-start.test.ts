import * as tf from '@tensorflow/tfjs-core';
import { initRuntime } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { createHyperModel, randomizeGenerator, TinyModel, tinyConfig, withCondition } from './helpers.js';

const VALUES = [null, 'en', 'fr', 'de'] as const;

/** Random per-row discrete conditions (null factors included), from a fixed seed. */
function randomConditions(rows: number, seed: number): Record<string, string | null>[] {
  let state = seed;
  const next = (): number => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state % 4;
  };
  return Array.from({ length: rows }, () => ({ src: VALUES[next()]!, tgt: VALUES[next()]! }));
}

beforeAll(async () => {
  await initRuntime();
});

describe('HyperLoraState exact start', () => {
  for (const headMode of ['full', 'basis', 'diag'] as const) {
    it(`gives the base model's output bit for bit for random conditions (${headMode})`, async () => {
      await withoutTensorLeaks(() => {
        const hyper = createHyperModel({ config: tinyConfig({ headMode }) });
        const plain = new TinyModel(1);
        const x = tf.randomNormal([7, 3, 6], 0, 1, 'float32', 11);
        const expected = plain.forward(x);
        for (const seed of [1, 2, 3]) {
          const conditions = randomConditions(7, seed);
          const perRow = withCondition(hyper, conditions, () => hyper.model.forward(x));
          const single = withCondition(hyper, conditions[0], () => hyper.model.forward(x));
          expect(Array.from(perRow.dataSync())).toEqual(Array.from(expected.dataSync()));
          expect(Array.from(single.dataSync())).toEqual(Array.from(expected.dataSync()));
          tf.dispose([perRow, single]);
        }
        // The adapter is live: once the generator leaves its start, the outputs move.
        randomizeGenerator(hyper.state);
        const moved = withCondition(hyper, randomConditions(7, 1), () => hyper.model.forward(x));
        expect(tf.tidy(() => tf.max(tf.abs(tf.sub(moved, expected))).dataSync()[0]!)).toBeGreaterThan(1e-3);
        tf.dispose([x, expected, moved]);
        plain.dispose();
        hyper.dispose();
      });
    });

    it(`gives the B-producing generator parameters non-zero gradients at step 0 (${headMode})`, async () => {
      await withoutTensorLeaks(() => {
        const hyper = createHyperModel({ config: tinyConfig({ headMode }) });
        const x = tf.randomNormal([4, 3, 6], 0, 1, 'float32', 12);
        const weights = tf.randomNormal([4, 3, 3], 0, 1, 'float32', 13);
        const named = hyper.state.namedTensors();
        const conditions = [{ src: 'en', tgt: 'fr' }, { src: 'fr', tgt: 'de' }, { src: 'en', tgt: 'fr' }, { tgt: 'en' }];
        const { value, grads } = tf.variableGrads(
          () => withCondition(hyper, conditions, () => tf.sum(tf.mul(hyper.model.forward(x), weights))) as tf.Scalar,
          named.map(([, variable]) => variable),
        );
        const norms = new Map(named.map(([key, variable]) => [key, tf.tidy(() => tf.max(tf.abs(grads[variable.name]!)).dataSync()[0]!)]));
        // The parameters that produce B: the B half of the full head's bias, the B-bases, diag's learned B.
        const bProducers = [...norms.keys()].filter((key) =>
          headMode === 'full' ? /^hyperlora\.head\..*\.bias$/u.test(key) : headMode === 'basis' ? key.endsWith('.b_basis') : key.endsWith('.lora_B'),
        );
        expect(bProducers.length).toBeGreaterThan(0);
        for (const key of bProducers) expect(norms.get(key), key).toBeGreaterThan(1e-4);
        tf.dispose([value, x, weights, ...Object.values(grads)]);
        hyper.dispose();
      });
    });
  }

  it('starts exactly at the base model with a continuous condition', async () => {
    await withoutTensorLeaks(() => {
      const hyper = createHyperModel({ config: tinyConfig({ condition: { kind: 'continuous', size: 5, dim: 4 } }) });
      const plain = new TinyModel(1);
      const x = tf.randomNormal([3, 2, 6], 0, 1, 'float32', 14);
      const vectors = [[1, 2, 3, 4, 5], [0.5, -1, 0, 2, 1], [1, 2, 3, 4, 5]];
      const actual = withCondition(hyper, vectors, () => hyper.model.forward(x));
      const expected = plain.forward(x);
      expect(Array.from(actual.dataSync())).toEqual(Array.from(expected.dataSync()));
      tf.dispose([x, actual, expected]);
      plain.dispose();
      hyper.dispose();
    });
  });
});
