import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CAUSAL_ATTENTION_GRAD_KERNEL,
  CAUSAL_ATTENTION_KERNEL,
  CAUSAL_SELF_ATTENTION_GRAD_KERNEL,
  CAUSAL_SELF_ATTENTION_KERNEL,
  causalAttention,
  causalSelfAttention,
} from '../src/causal-attention.js';
import { causalMix, causalScores } from '../src/causal-products.js';
import { ATTENTION_GRAD_KERNEL, ATTENTION_KERNEL, bidirectionalAttention } from '../src/bidirectional-attention.js';
import { dropout, initRuntime } from '../src/index.js';
import { withSeededRandom } from '../src/random-scope.js';
import { matMulFlops, spyOnKernels } from '../src/kernel-spy.js';
import { scaledSoftmax } from '../src/scaled-softmax.js';
import { expectSameValues, expectTensorsClose, maxRelativeError, seededRandomValues, withoutTensorLeaks } from '../src/testing.js';

// [leading axes, T, D]: the small model's attention; sizes off the 4×8 tile and off 4-value rows;
// T of 1, 2 and 5; T of 4k + 1, 4k + 2 and 4k + 3 (the softmax's last group of four rows).
const SHAPES: [number[], number, number][] = [
  [[8, 4], 128, 64],
  [[2, 3], 13, 5],
  [[1], 1, 3],
  [[3], 2, 4],
  [[2], 5, 9],
  [[1], 37, 20],
  [[4], 7, 6],
  [[2, 2], 30, 8],
  // Past the helper's first 2 MiB (its buffer grows for them): the backward pass's matrix (T 520), both passes' (T 740).
  [[2], 520, 8],
  [[2], 740, 4],
];

/**
 * The float64 reference, matrix by matrix: o = P·v with P = softmax(scale·q·kᵀ) over keys ≤ the
 * query, and the gradients of Σ o∘dO: dP = dO·vᵀ, dS = scale·P∘(dP − Σⱼ dP∘P), dq = dS·k,
 * dk = dSᵀ·q, dv = Pᵀ·dO.
 */
function reference(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  dOut: Float32Array,
  matrices: number,
  rows: number,
  depth: number,
  scale: number,
  // Keys row i of matrix m attends to: the first kept(m, i) (default i + 1; fewer in a right-padded sequence).
  kept: (m: number, i: number) => number = (_m, i) => i + 1,
) {
  const [o, dq, dk, dv] = [0, 1, 2, 3].map(() => new Float64Array(matrices * rows * depth)) as [Float64Array, Float64Array, Float64Array, Float64Array];
  for (let m = 0; m < matrices; m++) {
    const at = (i: number, d: number): number => (m * rows + i) * depth + d;
    const p = Array.from({ length: rows }, () => new Float64Array(rows));
    const ds = Array.from({ length: rows }, () => new Float64Array(rows));
    for (let i = 0; i < rows; i++) {
      const keys = kept(m, i);
      let max = -Infinity;
      for (let j = 0; j < keys; j++) {
        let s = 0;
        for (let d = 0; d < depth; d++) s += q[at(i, d)]! * k[at(j, d)]!;
        p[i]![j] = scale * s;
        max = Math.max(max, p[i]![j]!);
      }
      let sum = 0;
      for (let j = 0; j < keys; j++) sum += p[i]![j] = Math.exp(p[i]![j]! - max);
      for (let j = 0; j < keys; j++) p[i]![j]! /= sum;
      let dot = 0;
      for (let j = 0; j < keys; j++) {
        let dp = 0;
        for (let d = 0; d < depth; d++) dp += dOut[at(i, d)]! * v[at(j, d)]!;
        ds[i]![j] = dp;
        dot += dp * p[i]![j]!;
      }
      for (let j = 0; j < keys; j++) ds[i]![j] = scale * p[i]![j]! * (ds[i]![j]! - dot);
    }
    for (let i = 0; i < rows; i++) {
      for (let d = 0; d < depth; d++) {
        let [oSum, dqSum, dkSum, dvSum] = [0, 0, 0, 0];
        // p and ds are 0 past each row's kept keys.
        for (let j = 0; j < rows; j++) {
          oSum += p[i]![j]! * v[at(j, d)]!;
          dqSum += ds[i]![j]! * k[at(j, d)]!;
        }
        for (let j = 0; j < rows; j++) {
          dkSum += ds[j]![i]! * q[at(j, d)]!;
          dvSum += p[j]![i]! * dOut[at(j, d)]!;
        }
        [o[at(i, d)], dq[at(i, d)], dk[at(i, d)], dv[at(i, d)]] = [oSum, dqSum, dkSum, dvSum];
      }
    }
  }
  return { o, dq, dk, dv };
}

/** The causal mask as models' attention passes it: 0 where query i sees key j ≤ i, −1e9 above the diagonal. */
const causalMask = (rows: number): tf.Tensor2D =>
  tf.tensor2d(
    Float32Array.from({ length: rows * rows }, (_, index) => (index % rows > Math.floor(index / rows) ? -1e9 : 0)),
    [rows, rows]
  );

function operands(leading: number[], rows: number, depth: number) {
  const matrices = leading.reduce((product, dimension) => product * dimension, 1);
  const size = matrices * rows * depth;
  // Scores of a few units (as trained attention's), so the softmax is neither flat nor one-hot.
  const [q, k, v, dOut] = [1, 2, 3, 4].map((seed) => Float32Array.from(seededRandomValues(size, seed, seed <= 2 ? 2 : 1)));
  const scale = 1 / Math.sqrt(depth);
  return { q: q!, k: k!, v: v!, dOut: dOut!, scale, matrices, shape: [...leading, rows, depth], expected: reference(q!, k!, v!, dOut!, matrices, rows, depth, scale) };
}

/**
 * operands()' [B, H, T, D] stacks given to `attend` in the layers' layout [B, T, H·D] (tensors made
 * here; `dispose` frees them): `run(options)` gives its output and the gradients of Σ o∘dO, as stacks
 * again, and the kernels that ran.
 */
function inLayersLayout(
  values: { q: Float32Array; k: Float32Array; v: Float32Array; dOut: Float32Array },
  [batch, heads, rows, depth]: [number, number, number, number],
  attend: (q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, options: { keyLengths?: number[]; dropout?: number }) => tf.Tensor,
) {
  const toLayers = (x: Float32Array): tf.Tensor => tf.tidy(() => tf.reshape(tf.transpose(tf.tensor(x, [batch, heads, rows, depth]), [0, 2, 1, 3]), [batch, rows, heads * depth]));
  const toStack = (x: tf.Tensor): Float32Array => tf.tidy(() => tf.transpose(tf.reshape(x, [batch, rows, heads, depth]), [0, 2, 1, 3]).dataSync() as Float32Array);
  const [tq, tk, tv, tdo] = [values.q, values.k, values.v, values.dOut].map(toLayers) as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
  return {
    run(options: { keyLengths?: number[]; dropout?: number }): { names: string[]; values: Float32Array[] } {
      const spy = spyOnKernels();
      const results = tf.tidy(() => {
        const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(attend(a, b, c, options), tdo)))([tq, tk, tv]);
        value.dispose();
        return [attend(tq, tk, tv, options), ...grads].map(toStack);
      });
      spy.stop();
      return { names: spy.calls.map((call) => call.kernelName), values: results };
    },
    dispose: (): void => tf.dispose([tq, tk, tv, tdo]),
  };
}

/** The values of a stack [matrices, T, D] in the rows (matrix m, row i) that `which` picks. */
const rowsOf = (values: Float32Array, rows: number, depth: number, which: (m: number, i: number) => boolean): number[] =>
  Array.from(values).filter((_, index) => which(Math.floor(index / (rows * depth)), Math.floor(index / depth) % rows));

/**
 * The checks both padded forms share, on `run`'s stacks (o, dq, dk, dv) for right-padded sequences
 * (`own(m, j)`: key j belongs to matrix m's sequence): padding keys get no gradient (dk and dv exactly
 * 0 there), and with dropout too, every result finite and moved by it.
 */
function expectPaddingAndDropout(
  run: (options: { keyLengths?: number[]; dropout?: number }) => { values: Float32Array[] },
  padded: Float32Array[],
  lengths: number[],
  [rows, depth]: [number, number],
  own: (m: number, j: number) => boolean,
): void {
  const padding = (m: number, j: number): boolean => !own(m, j);
  for (const i of [2, 3]) expect(rowsOf(padded[i]!, rows, depth, padding).every((value) => value === 0)).toBe(true);
  const dropped = run({ keyLengths: lengths, dropout: 0.25 });
  dropped.values.forEach((values, i) => {
    expect(values.every(Number.isFinite)).toBe(true);
    expect(Array.from(values)).not.toEqual(Array.from(padded[i]!));
  });
  for (const i of [2, 3]) expect(rowsOf(dropped.values[i]!, rows, depth, padding).every((value) => value === 0)).toBe(true);
}

describe('causal attention in one kernel each way', () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('wasm');
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it.each(SHAPES)('matches float64 on WASM, output and gradients, for leading axes %j, T %i, D %i', async (leading, rows, depth) => {
    const { q, k, v, dOut, scale, shape, expected } = operands(leading, rows, depth);
    await withoutTensorLeaks(() => {
      const [tq, tk, tv, tdo] = [q, k, v, dOut].map((values) => tf.tensor(values, shape));
      const spy = spyOnKernels();
      const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(causalAttention(a, b, c, scale)!, tdo!)))([tq!, tk!, tv!]);
      spy.stop();
      const out = tf.tidy(() => causalAttention(tq!, tk!, tv!, scale)!);
      // One kernel each way; no product, softmax or [..., T, T] tensor anywhere in the step.
      const names = spy.calls.map((call) => call.kernelName);
      expect(names.filter((name) => name === CAUSAL_ATTENTION_KERNEL || name === CAUSAL_ATTENTION_GRAD_KERNEL)).toEqual([CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL]);
      expect(names.filter((name) => /MatMul|Causal(Scores|Mix)|Softmax/.test(name))).toEqual([]);
      if (rows > depth) expect(spy.calls.flatMap((call) => call.outputShapes).filter((s) => s.length >= 2 && s[s.length - 1] === rows && s[s.length - 2] === rows)).toEqual([]);
      expect(out.shape).toEqual(shape);
      // Within 1e-5 of the largest value of each (float32 sums of ≤ 128 terms, a softmax, and its
      // gradient's difference dP − Σ dP∘P; measured up to 6e-7).
      const checks: [string, tf.Tensor, Float64Array][] = [
        ['o', out, expected.o],
        ['dq', grads[0]!, expected.dq],
        ['dk', grads[1]!, expected.dk],
        ['dv', grads[2]!, expected.dv],
      ];
      for (const [what, tensor, exact] of checks) expect(maxRelativeError(tensor, exact), what).toBeLessThan(1e-5);
      tf.dispose([tq!, tk!, tv!, tdo!, value, out, ...grads]);
    });
  });

  // A scale that is not positive (which no model passes) turns the scores' order over: the kernel's
  // softmax finds the largest scaled score from the smallest score then.
  it.each([...SHAPES.map(([leading, rows, depth]): [number[], number, number, number | undefined] => [leading, rows, depth, undefined]), [[2, 3], 13, 5, -0.7], [[1], 37, 20, 0]])(
    'equals core’s causal products around its scaled softmax, value for value, for leading axes %j, T %i, D %i, scale %s (undefined: 1/√D)',
    async (leading, rows, depth, scaleGiven) => {
      const { q, k, v, dOut, shape, ...defaults } = operands(leading, rows, depth);
      const scale = scaleGiven ?? defaults.scale;
      await withoutTensorLeaks(() => {
        const [tq, tk, tv, tdo] = [q, k, v, dOut].map((values) => tf.tensor(values, shape));
        const mask = causalMask(rows);
        const separate = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor => causalMix(scaledSoftmax(causalScores(a, b)!, scale, mask), c)!;
        const whole = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor => causalAttention(a, b, c, scale)!;
        const run = (attend: typeof whole): number[][] =>
          tf.tidy(() => {
            const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(attend(a, b, c), tdo!)))([tq!, tk!, tv!]);
            return [attend(tq!, tk!, tv!), value, ...grads].map((tensor) => Array.from(tensor.dataSync()));
          });
        const [ours, theirs] = [run(whole), run(separate)];
        ours.forEach((values, i) => expectSameValues(values, theirs[i]!, ['o', 'Σ o∘dO', 'dq', 'dk', 'dv'][i]));
        // Not a trivial agreement: finite, and not all zero.
        expect(ours[0]!.every(Number.isFinite) && ours[0]!.some((value) => value !== 0)).toBe(true);
        tf.dispose([tq!, tk!, tv!, tdo!, mask]);
      });
    }
  );

  // Attention dropout: the probabilities dropped by core's dropout (its mask of the [..., T, T]
  // tensor, from the same seed) between the softmax and the product with v. Stacks, the layers'
  // layout and GPT-2's fused projection; on two threads (T 520: the helper's grown buffer too).
  it.each([
    [[8, 4], 128, 64, 0.1],
    [[2, 3], 13, 5, 0.5],
    [[1], 1, 3, 0.3],
    [[2], 37, 20, 0.9],
    [[2], 520, 8, 0.2],
  ])('drops the probabilities as core’s dropout between the separate kernels does, value for value (leading axes %j, T %i, D %i, p %f)', async (leading, rows, depth, p) => {
    const { q, k, v, dOut, scale, shape } = operands(leading, rows, depth);
    await withoutTensorLeaks(() => {
      const [tq, tk, tv, tdo] = [q, k, v, dOut].map((values) => tf.tensor(values, shape));
      const mask = causalMask(rows);
      const seed = 2 ** 32 - 5;
      const separate = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor => causalMix(dropout(scaledSoftmax(causalScores(a, b)!, scale, mask), p, { seed }), c)!;
      const whole = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor => causalAttention(a, b, c, scale, { dropout: p, seed })!;
      const undropped = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor => causalAttention(a, b, c, scale)!;
      const run = (attend: typeof whole): { names: string[]; values: number[][] } => {
        const spy = spyOnKernels();
        const values = tf.tidy(() => {
          const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(attend(a, b, c), tdo!)))([tq!, tk!, tv!]);
          return [attend(tq!, tk!, tv!), value, ...grads].map((tensor) => Array.from(tensor.dataSync()));
        });
        spy.stop();
        return { names: spy.calls.map((call) => call.kernelName), values };
      };
      const [ours, theirs, plain] = [run(whole), run(separate), run(undropped)];
      expect(ours.names.filter((name) => /Attention|Dropout|MatMul|Causal(Scores|Mix)|Softmax/.test(name)).sort()).toEqual([CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL].sort());
      ours.values.forEach((values, i) => expectSameValues(values, theirs.values[i]!, ['o', 'Σ o∘dO', 'dq', 'dk', 'dv'][i]));
      // The dropout did something (every output and gradient moved), and the result is finite.
      ours.values.forEach((values, i) => {
        expect(values.every(Number.isFinite)).toBe(true);
        if (rows > 1 || p >= 0.5) expect(values, ['o', 'Σ o∘dO', 'dq', 'dk', 'dv'][i]).not.toEqual(plain.values[i]);
      });
      tf.dispose([tq!, tk!, tv!, tdo!, mask]);
    });
  });

  it.each([
    [8, 128, 4, 64, 0.1],
    [2, 13, 3, 5, 0.4],
  ])('drops the probabilities read from GPT-2’s fused q|k|v and from the layers’ layout as from split heads (B %i, T %i, %i heads, D %i, p %f)', async (batch, rows, heads, depth, p) => {
    await withoutTensorLeaks(() => {
      const width = heads * depth;
      const qkv = tf.tensor(seededRandomValues(batch * rows * 3 * width, 9, 2), [batch, rows, 3 * width]);
      const dy = tf.tensor(seededRandomValues(batch * rows * width, 10), [batch, rows, width]);
      const scale = 1 / Math.sqrt(depth);
      const split = (x: tf.Tensor): tf.Tensor => tf.transpose(tf.reshape(x, [batch, rows, heads, depth]), [0, 2, 1, 3]);
      // The seed from a seeded scope: each form draws one, where the separate dropout would.
      const scoped = (attend: (packed: tf.Tensor) => tf.Tensor) => (packed: tf.Tensor): tf.Tensor => withSeededRandom(31, () => attend(packed));
      const forms: Record<string, (packed: tf.Tensor) => tf.Tensor> = {
        'split heads': (packed) => {
          const [q, k, v] = tf.split(packed, 3, -1) as [tf.Tensor, tf.Tensor, tf.Tensor];
          return tf.reshape(tf.transpose(causalAttention(split(q), split(k), split(v), scale, { dropout: p })!, [0, 2, 1, 3]), [batch, rows, width]);
        },
        'layers’ layout': (packed) => {
          const [q, k, v] = tf.split(packed, 3, -1) as [tf.Tensor, tf.Tensor, tf.Tensor];
          return causalAttention(q, k, v, scale, { heads, dropout: p })!;
        },
        'fused projection': (packed) => causalSelfAttention(packed, heads, scale, { dropout: p })!,
      };
      const run = (attend: (packed: tf.Tensor) => tf.Tensor): Float32Array[] =>
        tf.tidy(() => {
          const { value, grads } = tf.valueAndGrads((packed: tf.Tensor) => tf.sum(tf.mul(scoped(attend)(packed), dy)))([qkv]);
          return [scoped(attend)(qkv), value, grads[0]!].map((tensor) => tensor.dataSync() as Float32Array);
        });
      const [reference, ...others] = Object.values(forms).map(run);
      others.forEach((values, form) => values.forEach((part, i) => expectSameValues(part, reference![i]!, `${Object.keys(forms)[form + 1]} ${['o', 'Σ o∘dy', 'd(qkv)'][i]}`)));
      const plain = run((packed) => causalSelfAttention(packed, heads, scale)!);
      expect(reference![0]).not.toEqual(plain[0]);
      tf.dispose([qkv, dy]);
    });
  });

  it('refuses a dropout outside [0, 1) or a bad seed with a ConfigError, and draws no seed where it declines', async () => {
    await withoutTensorLeaks(() => {
      const x = tf.ones([1, 4, 6]);
      expect(() => causalSelfAttention(x, 2, 1, { dropout: 1 })).toThrow(/dropout/);
      expect(() => causalSelfAttention(x, 2, 1, { dropout: 0.1, seed: -1 })).toThrow(/seed/);
      // Declined (heads do not divide the width): null, and the scope's next seed is still the first.
      const first = withSeededRandom(5, () => {
        expect(causalSelfAttention(x, 4, 1, { dropout: 0.1 })).toBeNull();
        return tf.tidy(() => Array.from(dropout(tf.ones([8]), 0.5).dataSync()));
      });
      expect(first).toEqual(withSeededRandom(5, () => tf.tidy(() => Array.from(dropout(tf.ones([8]), 0.5).dataSync()))));
      x.dispose();
    });
  });

  // Right padding: sequence b's keys from keyLengths[b] on are masked for every query (a padding
  // query attends to the sequence's tokens), as a padding mask added to the causal one does. Lengths
  // across the 4-row groups of the softmax (1, 5, 13, 77, …), with and without dropout, on both threads.
  it.each([
    [[13, 5, 1], 13, 2, 5],
    [[128, 77], 128, 4, 64],
    [[2, 37, 30], 37, 3, 20],
    [[520, 301], 520, 2, 8],
  ])('takes right-padded sequences (lengths %j, T %i, %i heads, D %i): float64’s values, the unpadded rows’ bits, no gradient to padding keys', async (lengths, rows, heads, depth) => {
    const batch = lengths.length;
    const { q, k, v, dOut, scale } = operands([batch, heads], rows, depth);
    const kept = (m: number, i: number): number => Math.min(i + 1, lengths[Math.floor(m / heads)]!);
    const expected = reference(q, k, v, dOut, batch * heads, rows, depth, scale, kept);
    await withoutTensorLeaks(() => {
      const layers = inLayersLayout({ q, k, v, dOut }, [batch, heads, rows, depth], (a, b, c, options) => causalAttention(a, b, c, scale, { heads, seed: 9, ...options })!);
      const run = layers.run;
      const padded = run({ keyLengths: lengths });
      expect(padded.names.filter((name) => /Attention|MatMul|Softmax/.test(name)).sort()).toEqual([CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL].sort());
      // Within 1e-5 of the largest value of each, as the unpadded kernel (measured alike).
      (['o', 'dq', 'dk', 'dv'] as const).forEach((what, i) => expect(maxRelativeError(padded.values[i]!, expected[what]), what).toBeLessThan(1e-5));
      // The sequences' own rows (i < length) read nothing past them: o and dq there are the unpadded kernel's bits.
      const unpadded = run({});
      const own = (m: number, i: number): boolean => i < lengths[Math.floor(m / heads)]!;
      for (const i of [0, 1]) expectSameValues(rowsOf(padded.values[i]!, rows, depth, own), rowsOf(unpadded.values[i]!, rows, depth, own), ['o', 'dq'][i]);
      expectPaddingAndDropout(run, padded.values, lengths, [rows, depth], own);
      layers.dispose();
    });
  });

  // Bidirectional attention (an encoder's): every query sees its sequence's keys, all of them or
  // the first keyLengths[b] (right padding); the layers' layout in and out.
  it.each([
    [[13, 5, 1], 13, 2, 5],
    [[128, 77], 128, 4, 64],
    [[2, 37, 30], 37, 3, 20],
    [[520, 301], 520, 2, 8],
  ])('runs bidirectional attention (lengths %j, T %i, %i heads, D %i): float64’s values, no gradient to padding keys, dropout on', async (lengths, rows, heads, depth) => {
    const batch = lengths.length;
    const { q, k, v, dOut, scale } = operands([batch, heads], rows, depth);
    const expected = reference(q, k, v, dOut, batch * heads, rows, depth, scale, (m) => lengths[Math.floor(m / heads)]!);
    const whole = reference(q, k, v, dOut, batch * heads, rows, depth, scale, () => rows);
    await withoutTensorLeaks(() => {
      const layers = inLayersLayout({ q, k, v, dOut }, [batch, heads, rows, depth], (a, b, c, options) => bidirectionalAttention(a, b, c, scale, { heads, seed: 9, ...options })!);
      const run = layers.run;
      const padded = run({ keyLengths: lengths });
      expect(padded.names.filter((name) => /Attention|MatMul|Softmax/.test(name)).sort()).toEqual([ATTENTION_KERNEL, ATTENTION_KERNEL, ATTENTION_GRAD_KERNEL].sort());
      (['o', 'dq', 'dk', 'dv'] as const).forEach((what, i) => expect(maxRelativeError(padded.values[i]!, expected[what]), what).toBeLessThan(1e-5));
      const own = (m: number, j: number): boolean => j < lengths[Math.floor(m / heads)]!;
      // Without lengths: every key of every sequence, as lengths of T give, bit for bit.
      const unpadded = run({});
      (['o', 'dq', 'dk', 'dv'] as const).forEach((what, i) => expect(maxRelativeError(unpadded.values[i]!, whole[what]), `${what} unpadded`).toBeLessThan(1e-5));
      run({ keyLengths: lengths.map(() => rows) }).values.forEach((values, i) => expectSameValues(values, unpadded.values[i]!, ['o', 'dq', 'dk', 'dv'][i]));
      expectPaddingAndDropout(run, padded.values, lengths, [rows, depth], own);
      layers.dispose();
    });
  });

  it('drops bidirectional attention’s probabilities as core’s dropout between the separate ops does', async () => {
    await withoutTensorLeaks(() => {
      const [batch, rows, heads, depth] = [2, 11, 3, 4];
      const lengths = [11, 6];
      const [q, k, v] = [1, 2, 3].map((seed) => tf.tensor(seededRandomValues(batch * rows * heads * depth, seed, 2), [batch, rows, heads * depth]));
      const dy = tf.tensor(seededRandomValues(batch * rows * heads * depth, 4), [batch, rows, heads * depth]);
      const scale = 0.5;
      const split = (x: tf.Tensor): tf.Tensor => tf.transpose(tf.reshape(x, [batch, rows, heads, depth]), [0, 2, 1, 3]);
      const bias = tf.tensor4d(lengths.flatMap((length) => Array.from({ length: rows }, (_, j) => (j < length ? 0 : -1e9))), [batch, 1, 1, rows]);
      const separate = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor => {
        const probabilities = dropout(tf.softmax(tf.add(tf.mul(tf.matMul(split(a), split(b), false, true), scale), bias)), 0.3, { seed: 77 });
        return tf.reshape(tf.transpose(tf.matMul(probabilities, split(c)), [0, 2, 1, 3]), [batch, rows, heads * depth]);
      };
      const fused = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor => bidirectionalAttention(a, b, c, scale, { heads, keyLengths: lengths, dropout: 0.3, seed: 77 })!;
      const run = (attend: typeof fused): Float32Array[] =>
        tf.tidy(() => {
          const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(attend(a, b, c), dy)))([q!, k!, v!]);
          return [attend(q!, k!, v!), value, ...grads].map((tensor) => tensor.dataSync() as Float32Array);
        });
      const [ours, theirs] = [run(fused), run(separate)];
      ours.forEach((values, i) => expectTensorsClose(values, theirs[i]!, { rtol: 1e-5, atol: 1e-6 }));
      tf.dispose([q!, k!, v!, dy, bias]);
    });
  });

  it('declines lengths it cannot take (stacks, a wrong count, 0 or past T)', async () => {
    await withoutTensorLeaks(() => {
      const [q, k, v] = [1, 2, 3].map((seed) => tf.tensor(seededRandomValues(2 * 6 * 8, seed), [2, 6, 8]));
      const qkv = tf.concat([q!, k!, v!], 2);
      expect(causalAttention(q!, k!, v!, 1, { keyLengths: [6, 6] })).toBeNull();
      for (const keyLengths of [[6], [6, 0], [6, 7], [6, 2.5]]) {
        expect(causalAttention(q!, k!, v!, 1, { heads: 2, keyLengths })).toBeNull();
        expect(causalSelfAttention(qkv, 2, 1, { keyLengths })).toBeNull();
      }
      const taken = tf.tidy(() => [causalAttention(q!, k!, v!, 1, { heads: 2, keyLengths: [6, 3] })!.shape, causalSelfAttention(qkv, 2, 1, { keyLengths: [6, 3] })!.shape]);
      expect(taken).toEqual([
        [2, 6, 8],
        [2, 6, 8],
      ]);
      tf.dispose([q!, k!, v!, qkv]);
    });
  });

  it('is not disturbed by NaN left in the memory its scratch reuses (rows padded to 4 values hold it)', async () => {
    const [leading, rows, depth] = SHAPES[1]!;
    const { q, k, v, dOut, scale, shape } = operands(leading, rows, depth);
    await withoutTensorLeaks(() => {
      const [tq, tk, tv, tdo] = [q, k, v, dOut].map((values) => tf.tensor(values, shape));
      const mask = causalMask(rows);
      const gradients = (attend: (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.Tensor): number[][] =>
        tf.tidy(() =>
          tf
            .grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(attend(a, b, c), tdo!)))([tq!, tk!, tv!])
            .map((tensor) => Array.from(tensor.dataSync()))
        );
      const expected = gradients((a, b, c) => causalMix(scaledSoftmax(causalScores(a, b)!, scale, mask), c)!);
      for (let round = 0; round < 3; round++) {
        // Freed memory full of NaN, which the kernels' scratch is then allocated from.
        tf.dispose(tf.fill([1 << 16], Number.NaN));
        gradients((a, b, c) => causalAttention(a, b, c, scale)!).forEach((values, i) => expectSameValues(values, expected[i]!, `${['dq', 'dk', 'dv'][i]} (round ${round})`));
      }
      tf.dispose([tq!, tk!, tv!, tdo!, mask]);
    });
  });

  // [batch, T, heads, D]: the small model's attention; sizes off the tile and off 4-value rows; T of 1.
  it.each([
    [8, 128, 4, 64],
    [2, 13, 3, 5],
    [1, 1, 2, 3],
    [3, 37, 2, 20],
    // The backward pass's matrix past the helper's first 2 MiB.
    [2, 520, 2, 8],
  ])(
    'reads GPT-2’s fused q|k|v [B, T, 3·H·D] in place and writes the heads merged, equal to splitting and merging them, value for value (B %i, T %i, %i heads, D %i)',
    async (batch, rows, heads, depth) => {
      await withoutTensorLeaks(() => {
        const width = heads * depth;
        const qkv = tf.tensor(seededRandomValues(batch * rows * 3 * width, 9, 2), [batch, rows, 3 * width]);
        const dy = tf.tensor(seededRandomValues(batch * rows * width, 10), [batch, rows, width]);
        const scale = 1 / Math.sqrt(depth);
        const split = (x: tf.Tensor): tf.Tensor => tf.transpose(tf.reshape(x, [batch, rows, heads, depth]), [0, 2, 1, 3]);
        const apart = (packed: tf.Tensor): tf.Tensor => {
          const [q, k, v] = tf.split(packed, 3, -1) as [tf.Tensor, tf.Tensor, tf.Tensor];
          return tf.reshape(tf.transpose(causalAttention(split(q), split(k), split(v), scale)!, [0, 2, 1, 3]), [batch, rows, width]);
        };
        const together = (packed: tf.Tensor): tf.Tensor => causalSelfAttention(packed, heads, scale)!;
        const run = (attend: (packed: tf.Tensor) => tf.Tensor): { names: string[]; values: Float32Array[] } => {
          const spy = spyOnKernels();
          const values = tf.tidy(() => {
            const { value, grads } = tf.valueAndGrads((packed: tf.Tensor) => tf.sum(tf.mul(attend(packed), dy)))([qkv]);
            return [attend(qkv), value, grads[0]!].map((tensor) => tensor.dataSync() as Float32Array);
          });
          spy.stop();
          return { names: spy.calls.map((call) => call.kernelName), values };
        };
        const ours = run(together);
        const theirs = run(apart);
        // One kernel each way, and no split, transpose or concatenation around it.
        expect(ours.names.filter((name) => /Attention|Transpose|SplitV|Concat|MatMul/.test(name)).sort()).toEqual(
          [CAUSAL_SELF_ATTENTION_KERNEL, CAUSAL_SELF_ATTENTION_KERNEL, CAUSAL_SELF_ATTENTION_GRAD_KERNEL].sort()
        );
        ours.values.forEach((values, i) => expectSameValues(values, theirs.values[i]!, ['o', 'Σ o∘dy', 'd(qkv)'][i]));
        expect(ours.values[2]!.every(Number.isFinite) && ours.values[2]!.some((value) => value !== 0)).toBe(true);
        tf.dispose([qkv, dy]);
      });
    }
  );

  it.each([
    [8, 128, 4, 64],
    [2, 13, 3, 5],
    [3, 37, 2, 20],
    [2, 520, 2, 8],
  ])(
    'reads separate q, k, v in the layers’ layout [B, T, H·D] in place and writes the heads merged, equal to splitting and merging them, value for value (B %i, T %i, %i heads, D %i)',
    async (batch, rows, heads, depth) => {
      await withoutTensorLeaks(() => {
        const width = heads * depth;
        const [q, k, v] = [11, 12, 13].map((seed) => tf.tensor(seededRandomValues(batch * rows * width, seed, 2), [batch, rows, width]));
        const dy = tf.tensor(seededRandomValues(batch * rows * width, 14), [batch, rows, width]);
        const scale = 1 / Math.sqrt(depth);
        const split = (x: tf.Tensor): tf.Tensor => tf.transpose(tf.reshape(x, [batch, rows, heads, depth]), [0, 2, 1, 3]);
        const apart = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor => tf.reshape(tf.transpose(causalAttention(split(a), split(b), split(c), scale)!, [0, 2, 1, 3]), [batch, rows, width]);
        const together = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor => causalAttention(a, b, c, scale, { heads })!;
        const run = (attend: (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.Tensor): { names: string[]; values: Float32Array[] } => {
          const spy = spyOnKernels();
          const values = tf.tidy(() => {
            const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(attend(a, b, c), dy)))([q!, k!, v!]);
            return [attend(q!, k!, v!), value, ...grads].map((tensor) => tensor.dataSync() as Float32Array);
          });
          spy.stop();
          return { names: spy.calls.map((call) => call.kernelName), values };
        };
        const ours = run(together);
        const theirs = run(apart);
        // One kernel each way, and no transpose around it.
        expect(ours.names.filter((name) => /Attention|Transpose|SplitV|Concat|MatMul/.test(name)).sort()).toEqual([CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL].sort());
        ours.values.forEach((values, i) => expectSameValues(values, theirs.values[i]!, ['o', 'Σ o∘dy', 'dq', 'dk', 'dv'][i]));
        for (const gradient of ours.values.slice(2)) expect(gradient.every(Number.isFinite) && gradient.some((value) => value !== 0)).toBe(true);
        tf.dispose([q!, k!, v!, dy]);
      });
    }
  );

  it.each([
    [2, 37, 4, 2, 16],
    [1, 130, 6, 2, 8],
    [2, 9, 3, 1, 5],
  ])(
    'takes grouped-query k, v in the layers’ layout (B %i, T %i, %i heads, %i key/value heads, D %i): each key/value head serves its group, as repeating it does',
    async (batch, rows, heads, kvHeads, depth) => {
      await withoutTensorLeaks(() => {
        const group = heads / kvHeads;
        const q = tf.tensor(seededRandomValues(batch * rows * heads * depth, 21, 2), [batch, rows, heads * depth]);
        const [k, v] = [22, 23].map((seed) => tf.tensor(seededRandomValues(batch * rows * kvHeads * depth, seed, 2), [batch, rows, kvHeads * depth]));
        const dy = tf.tensor(seededRandomValues(batch * rows * heads * depth, 24), [batch, rows, heads * depth]);
        const scale = 1 / Math.sqrt(depth);
        // transformers' repeat_kv: query head h reads key/value head ⌊h / group⌋.
        const headIndex = tf.tensor1d(Array.from({ length: heads }, (_, h) => Math.floor(h / group)), 'int32');
        const repeated = (x: tf.Tensor): tf.Tensor => tf.reshape(tf.gather(tf.reshape(x, [batch, rows, kvHeads, depth]), headIndex, 2), [batch, rows, heads * depth]);
        const run = (attend: (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.Tensor): { names: string[]; values: Float32Array[] } => {
          const spy = spyOnKernels();
          const values = tf.tidy(() => {
            const { value, grads } = tf.valueAndGrads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(attend(a, b, c), dy)))([q, k!, v!]);
            return [attend(q, k!, v!), value, ...grads].map((tensor) => tensor.dataSync() as Float32Array);
          });
          spy.stop();
          return { names: spy.calls.map((call) => call.kernelName), values };
        };
        const ours = run((a, b, c) => causalAttention(a, b, c, scale, { heads, kvHeads })!);
        const theirs = run((a, b, c) => causalAttention(a, repeated(b), repeated(c), scale, { heads })!);
        expect(ours.names.filter((name) => /Attention|Transpose|MatMul/.test(name)).sort()).toEqual([CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL].sort());
        // The output and dq read the same numbers; dk and dv sum each group's terms (in another order where the group has more than two).
        ours.values.slice(0, 3).forEach((values, i) => expectSameValues(values, theirs.values[i]!, ['o', 'Σ o∘dy', 'dq'][i]));
        ours.values.slice(3).forEach((values, i) => expectTensorsClose(values, theirs.values[3 + i]!, { atol: 1e-6, rtol: 1e-6 }));
        for (const gradient of ours.values.slice(2)) expect(gradient.every(Number.isFinite) && gradient.some((value) => value !== 0)).toBe(true);
        tf.dispose([q, k!, v!, dy, headIndex]);
      });
    }
  );

  it('declines the layers’ layout for heads that do not divide its width, or for another rank', async () => {
    await withoutTensorLeaks(() => {
      const [odd, stacked] = [tf.ones([2, 5, 20]), tf.ones([2, 2, 5, 4])];
      expect(causalAttention(odd, odd, odd, 1, { heads: 3 })).toBeNull();
      expect(causalAttention(odd, odd, odd, 1, { heads: 0 })).toBeNull();
      expect(causalAttention(stacked, stacked, stacked, 1, { heads: 2 })).toBeNull();
      // Key/value heads that do not divide the heads, k and v of another width, or grouping without the layers' layout.
      const narrow = tf.ones([2, 5, 10]);
      expect(causalAttention(odd, narrow, narrow, 1, { heads: 4, kvHeads: 3 })).toBeNull();
      expect(causalAttention(odd, narrow, narrow, 1, { heads: 4, kvHeads: 1 })).toBeNull();
      expect(causalAttention(odd, odd, narrow, 1, { heads: 4, kvHeads: 2 })).toBeNull();
      expect(causalAttention(stacked, stacked, stacked, 1, { kvHeads: 1 })).toBeNull();
      narrow.dispose();
      tf.dispose([odd, stacked]);
    });
  });

  it('declines a fused projection it cannot split into heads, or too long', async () => {
    await withoutTensorLeaks(() => {
      // T = 4,200 at D = 64: the backward pass's two [T, T] scratch matrices would pass 128 MiB.
      const [odd, flat, long] = [tf.ones([2, 5, 20]), tf.ones([10, 24]), tf.zeros([1, 4200, 192])];
      expect(causalSelfAttention(odd, 3, 1)).toBeNull();
      expect(causalSelfAttention(flat, 2, 1)).toBeNull();
      expect(causalSelfAttention(long, 1, 1)).toBeNull();
      tf.dispose([odd, flat, long]);
    });
  });

  it('counts its causal products’ FLOPs: 2·D·T·(T + 1) a matrix forward, 5· backward', async () => {
    await withoutTensorLeaks(() => {
      const [q, k, v] = [1, 2, 3].map((seed) => tf.tensor(seededRandomValues(2 * 3 * 10 * 4, seed), [2, 3, 10, 4]));
      const spy = spyOnKernels();
      const grads = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(causalAttention(a, b, c, 0.5)!))([q!, k!, v!]);
      spy.stop();
      const flops = Object.fromEntries(spy.calls.filter((call) => /CausalAttention/.test(call.kernelName)).map((call) => [call.kernelName, matMulFlops(call)]));
      expect(flops).toEqual({ [CAUSAL_ATTENTION_KERNEL]: 2 * 6 * 4 * 10 * 11, [CAUSAL_ATTENTION_GRAD_KERNEL]: 5 * 6 * 4 * 10 * 11 });
      tf.dispose([q!, k!, v!, ...grads]);
    });
  });

  it('declines what it does not take (the caller computes attention another way)', async () => {
    await withoutTensorLeaks(() => {
      const [q, shorter, wider, vector] = [tf.ones([2, 5, 4]), tf.ones([2, 4, 4]), tf.ones([2, 5, 3]), tf.ones([5])];
      expect(causalAttention(q, shorter, q, 1)).toBeNull();
      expect(causalAttention(q, q, wider, 1)).toBeNull();
      expect(causalAttention(vector, vector, vector, 1)).toBeNull();
      const integers = tf.cast(q, 'int32');
      expect(causalAttention(integers, integers, integers, 1)).toBeNull();
      // A matrix whose scores and their gradient would pass the call's 128 MiB of scratch (T = 4,200 at D = 64).
      const long = tf.zeros([1, 4200, 64]);
      expect(causalAttention(long, long, long, 1)).toBeNull();
      tf.dispose([q, shorter, wider, vector, integers, long]);
    });
  });

  it('declines on the plain-JS backend', async () => {
    await tf.setBackend('cpu');
    try {
      tf.tidy(() => {
        const q = tf.ones([2, 5, 4]);
        expect(causalAttention(q, q, q, 1)).toBeNull();
      });
    } finally {
      await tf.setBackend('wasm');
    }
  });
});
