import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CAUSAL_MIX_KERNEL, CAUSAL_SCORES_KERNEL, causalMix, causalScores } from '../src/causal-products.js';
import { initRuntime } from '../src/index.js';
import { matMulFlops, spyOnKernels } from '../src/kernel-spy.js';
import { seededRandomValues, withoutTensorLeaks } from '../src/testing.js';

/** Seeded float32 operands (core's shared test helper). */
const values = (size: number, seed: number): Float32Array => Float32Array.from(seededRandomValues(size, seed));

/** [matrices, T, D] of a stack; the float64 products of one matrix are computed on index (i, j). */
interface Stack {
  readonly matrices: number;
  readonly rows: number;
  readonly depth: number;
}

/** For each matrix, out[i, j] = Σ_p term(i, j, p) over p < count(i, j), in float64, with the sums of the terms' absolute values. */
function sums(count: (i: number, j: number) => number, term: (m: number, i: number, j: number, p: number) => number, stack: Stack, columns: number) {
  const { matrices, rows } = stack;
  const exact = new Float64Array(matrices * rows * columns);
  const magnitude = new Float64Array(exact.length);
  for (let m = 0; m < matrices; m++) {
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < columns; j++) {
        let sum = 0;
        let abs = 0;
        for (let p = 0; p < count(i, j); p++) {
          const t = term(m, i, j, p);
          sum += t;
          abs += Math.abs(t);
        }
        exact[(m * rows + i) * columns + j] = sum;
        magnitude[(m * rows + i) * columns + j] = abs;
      }
    }
  }
  return { exact, magnitude };
}

/**
 * Each value within 2⁻¹⁸ of the sum of its terms' absolute values of the float64 result (float32
 * sums of ≤ 128 terms err by about √k·2⁻²⁴ of that sum), and exactly 0 where the float64 result has
 * no term at all (above the diagonal).
 */
function expectWithinRounding(got: ArrayLike<number>, expected: { exact: Float64Array; magnitude: Float64Array }, what: string, bound = 2 ** -18): void {
  expect(got.length).toBe(expected.exact.length);
  const bad = Array.from(got).findIndex((value, i) => !(Math.abs(value - expected.exact[i]!) <= bound * expected.magnitude[i]!));
  if (bad >= 0) expect.fail(`${what}[${bad}]: ${got[bad]} vs ${expected.exact[bad]} (terms' absolute sum ${expected.magnitude[bad]})`);
}

// [leading axes, T, D]: the small model's attention; sizes off the 4×8 tile; T of 1 to 5.
const SHAPES: [number[], number, number][] = [
  [[8, 4], 128, 64],
  [[2, 3], 13, 5],
  [[1], 1, 3],
  [[3], 2, 4],
  [[2], 5, 9],
  [[1], 37, 20],
];

/** The operands of one case: q, k [..., T, D], probabilities p [..., T, T] with NaN above the diagonal (never to be read), v and two upstream gradients. */
function operands(leading: number[], rows: number, depth: number) {
  const matrices = leading.reduce((product, dimension) => product * dimension, 1);
  const stack: Stack = { matrices, rows, depth };
  const q = values(matrices * rows * depth, 1);
  const k = values(matrices * rows * depth, 2);
  const v = values(matrices * rows * depth, 3);
  const p = values(matrices * rows * rows, 4).map((value, index) => (index % rows > Math.floor(index / rows) % rows ? Number.NaN : value));
  const dScores = values(matrices * rows * rows, 5);
  const dOut = values(matrices * rows * depth, 6);
  const at =
    (data: Float32Array, columns: number) =>
    (m: number, i: number, j: number): number =>
      data[(m * rows + i) * columns + j]!;
  const [Q, K, V, P, DS, DO] = [at(q, depth), at(k, depth), at(v, depth), at(p, rows), at(dScores, rows), at(dOut, depth)];
  const lowerP = (m: number, i: number, j: number): number => (j <= i ? P(m, i, j) : 0);
  const lowerDS = (m: number, i: number, j: number): number => (j <= i ? DS(m, i, j) : 0);
  const expected = {
    // tril(q·kᵀ): row i has i + 1 scores.
    scores: sums(
      (i, j) => (j <= i ? depth : 0),
      (m, i, j, d) => Q(m, i, d) * K(m, j, d),
      stack,
      rows
    ),
    // tril(p)·v: output i sums p[i, t]·v[t] over t ≤ i.
    mix: sums(
      (i) => i + 1,
      (m, i, j, t) => P(m, i, t) * V(m, t, j),
      stack,
      depth
    ),
    // Gradients of Σ tril(q·kᵀ)∘dS: dq = tril(dS)·k, dk = tril(dS)ᵀ·q.
    dq: sums(
      () => rows,
      (m, i, j, t) => lowerDS(m, i, t) * K(m, t, j),
      stack,
      depth
    ),
    dk: sums(
      () => rows,
      (m, i, j, t) => lowerDS(m, t, i) * Q(m, t, j),
      stack,
      depth
    ),
    // Gradients of Σ (tril(p)·v)∘dO: dp = tril(dO·vᵀ), dv = tril(p)ᵀ·dO.
    dp: sums(
      (i, j) => (j <= i ? depth : 0),
      (m, i, j, d) => DO(m, i, d) * V(m, j, d),
      stack,
      rows
    ),
    dv: sums(
      () => rows,
      (m, i, j, t) => lowerP(m, t, i) * DO(m, t, j),
      stack,
      depth
    ),
  };
  const shape = (columns: number): number[] => [...leading, rows, columns];
  return { q, k, v, p, dScores, dOut, expected, shape };
}

describe('causal attention products', () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('wasm');
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it.each(SHAPES)('match float64 on WASM, values and gradients, for leading axes %j, T %i, D %i (p NaN above the diagonal)', async (leading, rows, depth) => {
    const { q, k, v, p, dScores, dOut, expected, shape } = operands(leading, rows, depth);
    await withoutTensorLeaks(() => {
      const [tq, tk, tv, tp, tds, tdo] = [
        tf.tensor(q, shape(depth)),
        tf.tensor(k, shape(depth)),
        tf.tensor(v, shape(depth)),
        tf.tensor(p, shape(rows)),
        tf.tensor(dScores, shape(rows)),
        tf.tensor(dOut, shape(depth)),
      ];
      const spy = spyOnKernels();
      const scores = tf.tidy(() => causalScores(tq, tk)!);
      const out = tf.tidy(() => causalMix(tp, tv)!);
      const [dq, dk] = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(causalScores(a, b)!, tds)))([tq, tk]);
      const [dp, dv] = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(causalMix(a, b)!, tdo)))([tp, tv]);
      spy.stop();
      // Every product, forward and backward, is a causal one.
      const names = spy.calls.map((call) => call.kernelName);
      expect(names.filter((name) => /MatMul/.test(name))).toEqual([]);
      expect(names.filter((name) => name === CAUSAL_SCORES_KERNEL)).toHaveLength(3);
      expect(names.filter((name) => name === CAUSAL_MIX_KERNEL)).toHaveLength(5);
      expect(scores.shape).toEqual(shape(rows));
      expect(out.shape).toEqual(shape(depth));
      expectWithinRounding(scores.dataSync(), expected.scores, 'tril(q·kᵀ)');
      expectWithinRounding(out.dataSync(), expected.mix, 'tril(p)·v');
      expectWithinRounding(dq!.dataSync(), expected.dq, 'dq');
      expectWithinRounding(dk!.dataSync(), expected.dk, 'dk');
      expectWithinRounding(dp!.dataSync(), expected.dp, 'dp');
      expectWithinRounding(dv!.dataSync(), expected.dv, 'dv');
      tf.dispose([tq, tk, tv, tp, tds, tdo, scores, out, dq!, dk!, dp!, dv!]);
    });
  });

  it('agree with the stock kernels’ masked full products on WASM (each within the two forms’ rounding)', () => {
    const [leading, rows, depth] = SHAPES[0]!;
    const { q, k, v, p, expected, shape } = operands(leading, rows, depth);
    // The stock form multiplies everything, so p's NaNs are zeroed first (as a causal softmax leaves them, nearly).
    const finiteP = p.map((value) => (Number.isNaN(value) ? 0 : value));
    tf.tidy(() => {
      const [tq, tk, tv, tp] = [tf.tensor(q, shape(depth)), tf.tensor(k, shape(depth)), tf.tensor(v, shape(depth)), tf.tensor(finiteP, shape(rows))];
      const stockScores = tf.linalg.bandPart(tf.matMul(tq, tk, false, true), -1, 0);
      const stockMix = tf.matMul(tp, tv);
      expectWithinRounding(causalScores(tq, tk)!.dataSync(), { exact: Float64Array.from(stockScores.dataSync()), magnitude: expected.scores.magnitude }, 'scores', 2 ** -17);
      expectWithinRounding(causalMix(tp, tv)!.dataSync(), { exact: Float64Array.from(stockMix.dataSync()), magnitude: expected.mix.magnitude }, 'mix', 2 ** -17);
    });
  });

  it('count the triangle’s FLOPs, D·T·(T + 1) a matrix', async () => {
    await withoutTensorLeaks(() => {
      const [q, k] = [tf.ones([2, 3, 10, 4]), tf.ones([2, 3, 10, 4])];
      const spy = spyOnKernels();
      tf.dispose([causalScores(q, k)!]);
      spy.stop();
      expect(matMulFlops(spy.calls[0]!)).toBe(6 * 4 * 10 * 11);
      tf.dispose([q, k]);
    });
  });

  it('decline operands they do not take (the caller multiplies in full)', async () => {
    await withoutTensorLeaks(() => {
      const [q, k, wide, p] = [tf.ones([2, 5, 4]), tf.ones([2, 5, 3]), tf.ones([2, 6, 4]), tf.ones([2, 5, 6])];
      expect(causalScores(q, k)).toBeNull();
      expect(causalScores(q, wide)).toBeNull();
      expect(causalMix(p, wide)).toBeNull();
      const integers = tf.cast(q, 'int32');
      expect(causalScores(integers, k)).toBeNull();
      tf.dispose([q, k, wide, p, integers]);
    });
  });

  it('decline on the plain-JS backend', async () => {
    await tf.setBackend('cpu');
    try {
      tf.tidy(() => {
        const q = tf.ones([2, 5, 4]);
        expect(causalScores(q, q)).toBeNull();
        expect(causalMix(tf.ones([2, 5, 5]), q)).toBeNull();
      });
    } finally {
      await tf.setBackend('wasm');
    }
  });
});
