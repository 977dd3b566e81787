import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DROPOUT_KERNEL, dropoutThreshold } from '../src/dropout.js';
import { ConfigError, dropout, initRuntime, restoreWasmKernels, useFastWasmKernels } from '../src/index.js';
import { spyOnKernels, withSeededRandom } from '../src/internal.js';
import { expectSameValues, seededRandomValues, withoutTensorLeaks } from '../src/testing.js';

/**
 * The mask's hash written independently of random-scope.ts (BigInt arithmetic modulo 2³², not
 * Math.imul): murmur3's finalizer of seed ^ (i + 1)·0x9e3779b9.
 */
function referenceHash(seed: number, index: number): number {
  const wrap = (value: bigint): bigint => value & 0xffffffffn;
  let h = wrap(BigInt(seed) ^ wrap(BigInt(index + 1) * 0x9e3779b9n));
  h = wrap((h ^ (h >> 16n)) * 0x85ebca6bn);
  h = wrap((h ^ (h >> 13n)) * 0xc2b2ae35n);
  return Number(h ^ (h >> 16n));
}

/** Inputs with zeros of both signs and non-finite values among seeded ones. */
function inputValues(size: number): number[] {
  const values = seededRandomValues(size, 17, 4);
  values.splice(0, 6, 0, -0, Infinity, -Infinity, NaN, 1e-30);
  return values.slice(0, size);
}

/** dropout(x) and d/dx Σ dropout(x)·upstream, for a fixed seed, on the active backend. */
function valueAndGradient(shape: number[], p: number, seed: number): [Float32Array, Float32Array] {
  const tensors = tf.tidy(() => {
    const size = shape.reduce((a, b) => a * b, 1);
    const x = tf.tensor(inputValues(size), shape);
    const upstream = tf.tensor(seededRandomValues(size, 23, 2), shape);
    return [dropout(x, p, { seed }), tf.grad((input: tf.Tensor) => tf.sum(tf.mul(dropout(input, p, { seed }), upstream)))(x)];
  });
  return [readAndDispose(tensors[0]!), readAndDispose(tensors[1]!)];
}

/** The values of a float32 tensor, which is then disposed (read outside tf.tidy, which would walk a returned array element by element). */
function readAndDispose(tensor: tf.Tensor): Float32Array {
  const values = tensor.dataSync() as Float32Array;
  tensor.dispose();
  return values;
}

/** Kept fraction of `mask` (nonzero values) over the indices `select` picks, and a 5σ binomial bound on it for keep probability q. */
function keptFraction(mask: Float32Array, q: number, select: (index: number) => boolean): { fraction: number; bound: number } {
  let kept = 0;
  let count = 0;
  for (let i = 0; i < mask.length; i++) {
    if (!select(i)) continue;
    count++;
    if (mask[i] !== 0) kept++;
  }
  return { fraction: kept / count, bound: 5 * Math.sqrt((q * (1 - q)) / count) };
}

/** The mask of `size` elements (scale where kept) as the fused kernel computes it. */
const maskOf = (size: number, p: number, seed: number): Float32Array => readAndDispose(tf.tidy(() => dropout(tf.ones([size]), p, { seed })));

describe('dropout', () => {
  beforeAll(async () => {
    await initRuntime({ backend: 'wasm' });
  });
  afterAll(async () => {
    useFastWasmKernels('wasm');
    await tf.setBackend('wasm');
  });

  it('runs one fused kernel forward and one backward on WASM, and nothing is left behind', async () => {
    await tf.setBackend('wasm');
    await withoutTensorLeaks(() => {
      const spy = spyOnKernels();
      try {
        valueAndGradient([3, 37], 0.2, 5);
      } finally {
        spy.stop();
      }
      const names = spy.calls.map((call) => call.kernelName);
      // The value, the value again inside tf.grad, and the gradient.
      expect(names.filter((name) => name === DROPOUT_KERNEL)).toHaveLength(3);
      expect(names).not.toContain('RandomUniform');
      expect(names).not.toContain('GreaterEqual');
      const gradientCall = spy.calls.filter((call) => call.kernelName === DROPOUT_KERNEL)[2]!;
      expect(gradientCall.attrs['seed']).toBe(5);
    });
  });

  it.each([
    [[0], 0.5],
    [[1], 0.5],
    [[7], 0.1],
    [[1001], 0.3],
    [[3, 5], 0.5],
    [[2, 3, 7], 0.05],
    [[2, 5, 3, 3], 0.9],
    [[4, 8, 33], 0.25],
  ])('gives the same bits on the fused kernel as the composite form on the plain-JS backend and stock WASM, shape %j, p %s', async (shape, p) => {
    const seed = 0x9abcdef0;
    await tf.setBackend('wasm');
    const [fusedValue, fusedGradient] = valueAndGradient(shape, p, seed);
    await tf.setBackend('cpu');
    const [plainValue, plainGradient] = valueAndGradient(shape, p, seed);
    await tf.setBackend('wasm');
    restoreWasmKernels('wasm');
    let stock: [Float32Array, Float32Array];
    try {
      stock = valueAndGradient(shape, p, seed);
    } finally {
      useFastWasmKernels('wasm');
    }
    expectSameValues(fusedValue, plainValue, 'value vs plain JS');
    expectSameValues(fusedGradient, plainGradient, 'gradient vs plain JS');
    expectSameValues(fusedValue, stock[0], 'value vs stock WASM');
    expectSameValues(fusedGradient, stock[1], 'gradient vs stock WASM');
  });

  it('keeps element i where the independent hash says so and scales it by float32(1/(1−p))', async () => {
    await tf.setBackend('wasm');
    const size = 1003;
    const values = inputValues(size);
    const upstream = seededRandomValues(size, 23, 2);
    for (const [p, seed] of [
      [0.3, 0],
      [0.5, 0xffffffff],
      [0.05, 123456789],
    ] as const) {
      const [value, gradient] = valueAndGradient([size], p, seed);
      const scale = Math.fround(1 / (1 - p));
      for (let i = 0; i < size; i++) {
        // u = top 24 bits / 2²⁴ ≥ p, in float64.
        const keep = (referenceHash(seed, i) >>> 8) / 2 ** 24 >= p;
        const factor = keep ? scale : 0;
        expect(Object.is(value[i], Math.fround(Math.fround(values[i]!) * factor)), `value ${i}, p ${p}`).toBe(true);
        expect(Object.is(gradient[i], Math.fround(Math.fround(upstream[i]!) * factor)), `gradient ${i}, p ${p}`).toBe(true);
      }
    }
  });

  it('compares integers that mean exactly u ≥ p', () => {
    for (const p of [1e-9, 0.05, 0.1, 1 / 3, 0.5, 0.9, 1 - 2 ** -24, 1 - 1e-12]) {
      const threshold = dropoutThreshold(p);
      expect(threshold / 2 ** 24 >= p, `p ${p}`).toBe(true);
      expect((threshold - 1) / 2 ** 24 < p, `p ${p}`).toBe(true);
    }
    expect(dropoutThreshold(0.5)).toBe(2 ** 23);
  });

  it.each([0.05, 0.1, 0.3, 0.5, 0.9])('keeps a fraction 1 − p within 5σ for p %s, overall and over even/odd indices, halves and SIMD lanes', async (p) => {
    await tf.setBackend('wasm');
    const size = 1 << 20;
    for (const seed of [1, 0xdeadbeef]) {
      const mask = maskOf(size, p, seed);
      const q = 1 - p;
      const subsets: [string, (i: number) => boolean][] = [
        ['all', () => true],
        ['even', (i) => i % 2 === 0],
        ['odd', (i) => i % 2 === 1],
        ['first half', (i) => i < size / 2],
        ['second half', (i) => i >= size / 2],
        ...[0, 1, 2, 3].map((lane): [string, (i: number) => boolean] => [`lane ${lane}`, (i) => i % 4 === lane]),
      ];
      for (const [name, select] of subsets) {
        const { fraction, bound } = keptFraction(mask, q, select);
        expect(Math.abs(fraction - q), `${name}, seed ${seed}: kept ${fraction}, expected ${q} ± ${bound}`).toBeLessThan(bound);
      }
      // Neighbours are independent: both kept with probability (1 − p)².
      let bothKept = 0;
      for (let i = 0; i + 1 < size; i += 2) if (mask[i] !== 0 && mask[i + 1] !== 0) bothKept++;
      const pairs = size / 2;
      expect(Math.abs(bothKept / pairs - q * q)).toBeLessThan(5 * Math.sqrt((q * q * (1 - q * q)) / pairs));
    }
  });

  it('draws the same mask for the same seed, another for another seed, and depends only on the flat index', async () => {
    await tf.setBackend('wasm');
    const size = 1 << 16;
    const first = maskOf(size, 0.5, 42);
    expect(maskOf(size, 0.5, 42)).toEqual(first);
    // Two independent masks disagree on a fraction 2p(1 − p) = 0.5 of the elements.
    for (const other of [43, (42 ^ 0x80000000) >>> 0, 0]) {
      const second = maskOf(size, 0.5, other);
      const disagree = first.reduce((count, value, i) => count + (value !== second[i] ? 1 : 0), 0) / size;
      expect(Math.abs(disagree - 0.5), `seed 42 vs ${other}`).toBeLessThan(5 * Math.sqrt(0.25 / size));
    }
    // The mask of a [4, 8, 33] tensor is that of its 1056 values flattened.
    const shaped = readAndDispose(tf.tidy(() => dropout(tf.ones([4, 8, 33]), 0.5, { seed: 42 })));
    expect(Array.from(shaped)).toEqual(Array.from(first.subarray(0, 4 * 8 * 33)));
  });

  it('takes its seed from a seeded scope (so a resumed step repeats its masks), and draws a fresh one outside', async () => {
    await tf.setBackend('wasm');
    await withoutTensorLeaks(() => {
      const draw = (): number[] => Array.from(readAndDispose(tf.tidy(() => dropout(tf.ones([4096]), 0.5))));
      const [a1, a2] = withSeededRandom(7, () => [draw(), draw()]);
      const [b1, b2] = withSeededRandom(7, () => [draw(), draw()]);
      expect(b1).toEqual(a1);
      expect(b2).toEqual(a2);
      // The scope's second draw gets the scope's next seed, not the first mask again.
      expect(a2).not.toEqual(a1);
      expect(withSeededRandom(8, draw)).not.toEqual(a1);
      expect(draw()).not.toEqual(draw());
    });
  });

  it('returns the input itself for p = 0, refuses p outside [0, 1) and a seed that is not 32-bit, and leaks nothing', async () => {
    await tf.setBackend('wasm');
    const x = tf.ones([5]);
    await withoutTensorLeaks(() => {
      expect(dropout(x, 0)).toBe(x);
      for (const p of [1, -0.1, NaN, 2]) expect(() => dropout(x, p), `p ${p}`).toThrow(ConfigError);
      expect(() => dropout(x, 1)).toThrow(/dropout must be a number in \[0, 1\), got 1/u);
      for (const seed of [-1, 1.5, 2 ** 32]) expect(() => dropout(x, 0.5, { seed }), `seed ${seed}`).toThrow(/dropout seed must be an integer/u);
    });
    x.dispose();
  });

  it('runs the composite form where the kernel is not registered, and for int32 input (float32 output, as before)', async () => {
    await tf.setBackend('wasm');
    const fused = maskOf(64, 0.5, 9);
    restoreWasmKernels('wasm');
    try {
      await withoutTensorLeaks(() => {
        const spy = spyOnKernels();
        const composite = readAndDispose(tf.tidy(() => dropout(tf.ones([64]), 0.5, { seed: 9 })));
        spy.stop();
        expect(spy.calls.map((call) => call.kernelName)).not.toContain(DROPOUT_KERNEL);
        expectSameValues(composite, fused, 'composite on stock WASM vs fused');
      });
    } finally {
      useFastWasmKernels('wasm');
    }
    await withoutTensorLeaks(() => {
      const ints = tf.tidy(() => dropout(tf.ones([64], 'int32'), 0.5, { seed: 9 }));
      expect(ints.dtype).toBe('float32');
      expectSameValues(ints.dataSync() as Float32Array, fused, 'int32 input');
      ints.dispose();
    });
  });
});
