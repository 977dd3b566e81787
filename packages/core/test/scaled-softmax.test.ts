import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime } from '../src/index.js';
import { scaledSoftmax, SCALED_SOFTMAX_GRAD_KERNEL, SCALED_SOFTMAX_KERNEL } from '../src/internal.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

const MASK_VALUE = -1e9;

/** A causal additive mask [queries, keys] (keys ≥ queries: the last query sees every key). */
function causalMask(queries: number, keys: number): number[] {
  return Array.from({ length: queries * keys }, (_, index) => (index % keys > Math.floor(index / keys) + keys - queries ? MASK_VALUE : 0));
}

/** The value and the gradients (scores and mask) of Σ c·scaledSoftmax(x) on `backend`. */
async function run(backend: string, shape: number[], scale: number, withMask: boolean): Promise<{ kernels: string[]; results: Float32Array[] }> {
  await tf.setBackend(backend);
  const size = shape.reduce((a, b) => a * b, 1);
  const [queries, keys] = shape.slice(-2) as [number, number];
  const x = tf.tensor(Array.from({ length: size }, (_, i) => Math.sin(i * 2.1) * 6), shape);
  const c = tf.tensor(Array.from({ length: size }, (_, i) => Math.cos(i * 0.53)), shape);
  const mask = withMask ? tf.tensor2d(causalMask(queries, keys), [queries, keys]) : null;
  const spy = spyOnKernels();
  const value = scaledSoftmax(x, scale, mask);
  const loss = (scores: tf.Tensor, bias: tf.Tensor | null): tf.Scalar => tf.sum(tf.mul(scaledSoftmax(scores, scale, bias), c));
  const dx = tf.grad((scores: tf.Tensor) => loss(scores, mask))(x);
  const dMask = mask === null ? null : tf.grad((bias: tf.Tensor) => loss(x, bias))(mask);
  spy.stop();
  const results = [value, dx, ...(dMask === null ? [] : [dMask])].map((t) => t.dataSync() as Float32Array);
  tf.dispose([x, c, value, dx, ...(mask === null ? [] : [mask]), ...(dMask === null ? [] : [dMask])]);
  return { kernels: spy.calls.map((call) => call.kernelName), results };
}

describe('scaledSoftmax: fused WASM kernels against the composite form', () => {
  beforeAll(async () => {
    await initRuntime();
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it.each([
    [[2, 3, 5, 5], 0.125, true],
    [[2, 2, 4, 7], 1, true],
    [[1, 4, 8, 8], 0.35, false],
    [[3, 1, 1, 9], 2, true],
  ])('gives the value and the score and mask gradients of the plain-JS composite form for %j, scale %f, mask %s', async (shape, scale, withMask) => {
    const fused = await run('wasm', shape, scale, withMask);
    const composite = await run('cpu', shape, scale, withMask);
    await tf.setBackend('wasm');
    expect(fused.kernels).toContain(SCALED_SOFTMAX_KERNEL);
    expect(fused.kernels).toContain(SCALED_SOFTMAX_GRAD_KERNEL);
    expect(composite.kernels).not.toContain(SCALED_SOFTMAX_KERNEL);
    fused.results.forEach((values, i) => expectTensorsClose(values, composite.results[i]!, { atol: 1e-6, rtol: 1e-5 }));
    // Masked probabilities are exactly 0, and every row sums to 1.
    const [probabilities] = fused.results;
    const keys = shape[shape.length - 1]!;
    const mask = causalMask(shape[shape.length - 2]!, keys);
    probabilities!.forEach((p, i) => {
      if (withMask && mask[i % mask.length] === MASK_VALUE) expect(p).toBe(0);
    });
    for (let row = 0; row < probabilities!.length / keys; row++) expect(Math.abs(probabilities!.slice(row * keys, (row + 1) * keys).reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-6);
  });

  it('exponentiates within a unit in the last place (the SIMD exp its kernels share with cross-entropy, gelu_new and causal attention)', async () => {
    await tf.setBackend('wasm');
    // Rows [0, t]: p₀ = r and p₁ = round(e^t·r), r = 1/(1 + e^t) rounded, so p₁/p₀ is the kernel's e^t
    // within one more rounding (2⁻²⁴ relative). 20,000 values of t over [−87, 0], denser near 0.
    const count = 20_000;
    const ts = Array.from({ length: count }, (_, i) => -87 * ((i + 0.5) / count) ** 2);
    const x = tf.tensor2d(ts.flatMap((t) => [0, t]), [count, 2]);
    const y = scaledSoftmax(x, 1, null);
    const p = y.dataSync();
    let worst = 0;
    ts.forEach((t, i) => {
      const exact = Math.exp(Math.fround(t));
      worst = Math.max(worst, Math.abs(p[2 * i + 1]! / p[2 * i]! - exact) / exact);
    });
    // One unit in the last place is at most 2⁻²³ relative, the rounding of e^t·r 2⁻²⁴ more.
    expect(worst).toBeLessThan(2 ** -23 + 2 ** -24);
    expect(worst).toBeGreaterThan(0);
    tf.dispose([x, y]);
  });

  it('keeps a NaN score visible (its row becomes NaN, as tf.softmax)', async () => {
    await tf.setBackend('wasm');
    const x = tf.tensor2d([1, Number.NaN, 2, 3, 0.5, -1, 4, 2], [2, 4]);
    const y = scaledSoftmax(x, 1, null);
    const values = Array.from(y.dataSync());
    expect(values.slice(0, 4).every(Number.isNaN)).toBe(true);
    expect(values.slice(4).every(Number.isFinite)).toBe(true);
    tf.dispose([x, y]);
  });

  it('computes the composite form for a mask of another shape (padding), and leaves no tensors behind', async () => {
    await tf.setBackend('wasm');
    await withoutTensorLeaks(async () => {
      const x = tf.randomNormal([2, 2, 3, 3], 0, 1, 'float32', 5);
      const padding = tf.tensor4d([0, 0, MASK_VALUE, 0, 0, 0], [2, 1, 1, 3]);
      const spy = spyOnKernels();
      const y = scaledSoftmax(x, 0.5, padding);
      spy.stop();
      expect(spy.calls.map((call) => call.kernelName)).toContain('Softmax');
      const expected = tf.tidy(() => tf.softmax(tf.add(tf.mul(x, 0.5), padding)));
      expectTensorsClose(y, expected, { atol: 1e-7, rtol: 1e-6 });
      tf.dispose([x, padding, y, expected]);
      await run('wasm', [2, 2, 3, 3], 0.5, true);
    });
  });
});
