import * as tf from '@tensorflow/tfjs-core';
import { initRuntime, ShapeError } from '@lora/core';
import { expectTensorsClose, withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { batchConditions } from '../src/index.js';
import { createHyperModel, LANGUAGES, randomizeGenerator, tinyConfig, withCondition } from './helpers.js';

beforeAll(async () => {
  await initRuntime();
});

const ROWS = [
  { src: 'en', tgt: 'fr' },
  { src: 'fr', tgt: 'de' },
  { src: 'en', tgt: 'fr' },
  { src: 'de' },
  { src: 'fr', tgt: 'de' },
  { src: 'en', tgt: 'fr' },
];

describe('batchConditions', () => {
  it('deduplicates rows to the distinct conditions in order of first appearance', () => {
    const batch = batchConditions(LANGUAGES, ROWS);
    expect(batch.keys).toEqual(['src=en|tgt=fr', 'src=fr|tgt=de', 'src=de|tgt=']);
    expect(Array.from(batch.rowToUnique!)).toEqual([0, 1, 0, 2, 1, 0]);
  });

  it('uses the single-condition fast path when all rows agree, keeping the row count of a list', () => {
    const agreeing = batchConditions(LANGUAGES, [ROWS[0]!, ROWS[2]!]);
    expect([agreeing.rowToUnique, agreeing.rows]).toEqual([null, 2]);
    const single = batchConditions(LANGUAGES, ROWS[0]);
    expect([single.rowToUnique, single.rows]).toEqual([null, null]);
    expect(batchConditions(LANGUAGES, ROWS).rows).toBe(ROWS.length);
  });

  it('replaces factors by null with condition dropout', () => {
    const batch = batchConditions(LANGUAGES, ROWS, { dropout: 0.5, random: (() => { let i = 0; return () => (i++ % 2 === 0 ? 0.1 : 0.9); })() });
    // Every first factor (src) is dropped, every second kept.
    expect(batch.keys).toEqual(['src=|tgt=fr', 'src=|tgt=de', 'src=|tgt=']);
  });
});

describe('HyperLoraAdapter per-row conditions', () => {
  for (const headMode of ['full', 'basis', 'diag'] as const) {
    it(`gives each row what its condition's sub-batch gives (${headMode}, atol 1e-6)`, async () => {
      await withoutTensorLeaks(() => {
        const hyper = createHyperModel({ config: tinyConfig({ headMode }) });
        randomizeGenerator(hyper.state);
        hyper.model.eval();
        const x = tf.randomNormal([ROWS.length, 3, 6], 0, 1, 'float32', 21);
        const mixed = withCondition(hyper, ROWS, () => hyper.model.forward(x));
        const keys = batchConditions(LANGUAGES, ROWS).keys;
        const rowToUnique = Array.from(batchConditions(LANGUAGES, ROWS).rowToUnique!);
        keys.forEach((_, u) => {
          const rows = rowToUnique.flatMap((value, row) => (value === u ? [row] : []));
          const sub = tf.gather(x, rows);
          const expected = withCondition(hyper, ROWS[rows[0]!], () => hyper.model.forward(sub));
          const actual = tf.gather(mixed, rows);
          expectTensorsClose(actual, expected, { atol: 1e-6, rtol: 0 });
          tf.dispose([sub, expected, actual]);
        });
        // Different conditions give different outputs (the rows are not all the same adapter).
        const first = withCondition(hyper, ROWS[0], () => hyper.model.forward(x));
        expect(tf.tidy(() => tf.max(tf.abs(tf.sub(first, mixed))).dataSync()[0]!)).toBeGreaterThan(1e-4);
        tf.dispose([x, mixed, first]);
        hyper.dispose();
      });
    });
  }

  it('runs the generator on u×M rows for u distinct conditions, not batch×M', async () => {
    await withoutTensorLeaks(() => {
      const hyper = createHyperModel({ cacheBytes: 0 });
      const M = hyper.state.plan.targets.length;
      expect(M).toBe(4);
      const x = tf.randomNormal([ROWS.length, 2, 6], 0, 1, 'float32', 22);
      const before = hyper.state.generator.rowsGenerated;
      tf.dispose(withCondition(hyper, ROWS, () => hyper.model.forward(x)));
      expect(hyper.state.generator.rowsGenerated - before).toBe(3 * M);
      const single = hyper.state.generator.rowsGenerated;
      tf.dispose(withCondition(hyper, ROWS[0], () => hyper.model.forward(x)));
      expect(hyper.state.generator.rowsGenerated - single).toBe(M);
      tf.dispose(x);
      hyper.dispose();
    });
  });

  it('rejects a per-row list whose length is not the batch size', async () => {
    await withoutTensorLeaks(() => {
      const hyper = createHyperModel();
      const x = tf.randomNormal([4, 6]);
      expect(() => withCondition(hyper, ROWS, () => hyper.model.forward(x))).toThrow(ShapeError);
      tf.dispose(x);
      hyper.dispose();
    });
  });
});
