import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { initRuntime } from '../src/index.js';
import { geluErf, GELU_ERF_GRAD_KERNEL, GELU_ERF_KERNEL } from '../src/internal.js';
import { describeFusedActivation } from './fused-activation-suite.js';

/**
 * Φ(x) = P(N(0, 1) ≤ x) in float64: the Taylor series of erf for |x| ≤ 3 (terms well below 2⁵³ there),
 * and Laplace's continued fraction of the upper tail beyond, so the far tails keep their relative
 * accuracy (1 + erf would cancel).
 */
function normalCdf(x: number): number {
  const z = Math.abs(x) / Math.SQRT2;
  let upperHalf: number; // Q(|x|) = 0.5·erfc(z)
  if (Math.abs(x) <= 3) {
    let term = z;
    let sum = z;
    for (let n = 1; n < 200 && Math.abs(term) > 1e-300; n++) {
      term *= (-z * z) / n;
      sum += term / (2 * n + 1);
    }
    upperHalf = 0.5 * (1 - (2 / Math.sqrt(Math.PI)) * sum);
  } else {
    // Q(t) = φ(t) / (t + 1/(t + 2/(t + 3/(t + …)))), evaluated from the tail.
    const t = Math.abs(x);
    let fraction = t;
    for (let k = 200; k >= 1; k--) fraction = t + k / fraction;
    upperHalf = Math.exp(-t * t / 2) / Math.sqrt(2 * Math.PI) / fraction;
  }
  return x > 0 ? 1 - upperHalf : upperHalf;
}
const gelu = (x: number): number => x * normalCdf(x);
const geluSlope = (x: number): number => normalCdf(x) + (x * Math.exp(-x * x / 2)) / Math.sqrt(2 * Math.PI);

describeFusedActivation({
  name: "BERT's exact gelu",
  activation: geluErf,
  kernels: { value: GELU_ERF_KERNEL, gradient: GELU_ERF_GRAD_KERNEL },
  compositeKernels: ['Erf'],
  reference: gelu,
  slope: geluSlope,
  // Zeros, both tails (Φ = 0 or 1) and values over the whole range.
  spread: 9,
  extremes: [0, -0, 100, -100, 1e-8, -1e-8, 30, -30, 5.5, -5.5],
  // erfc's fit is within 1.2e−7 relative, and float32 rounding adds a few units in the last place.
  float64Tolerance: { atol: 1e-7, rtol: 2e-6 },
  // tfjs's plain-JS erf is Abramowitz and Stegun's 7.1.26 (absolute error up to 1.5e−7).
  compositeTolerance: { atol: 1e-6, rtol: 1e-5 },
});

describe("BERT's exact gelu, beyond the shared checks", () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('wasm');
  });

  it('checks its own float64 reference against known values of Φ', () => {
    // Φ(0) = 1/2, Φ(1) = 0.8413447460685429, Φ(−3) = 0.0013498980316300946, Φ(−6) = 9.865876450376946e−10, Φ(−10) = 7.61985302416047e−24.
    for (const [x, expected] of [[0, 0.5], [1, 0.8413447460685429], [-3, 0.0013498980316300946], [-6, 9.865876450376946e-10], [-10, 7.61985302416047e-24]] as const) {
      expect(Math.abs(normalCdf(x) - expected) / expected, `Φ(${x})`).toBeLessThan(1e-12);
    }
  });

  it('keeps NaN in the value and the gradient (the fused kernel, on wasm)', async () => {
    const nan = tf.tensor1d([Number.NaN, 1, Number.NaN, -2, 3]);
    const ones = tf.onesLike(nan);
    const [value, gradient] = tf.tidy(() => [geluErf(nan), tf.grad((input: tf.Tensor) => tf.sum(tf.mul(geluErf(input), ones)))(nan)]);
    expect(Array.from(await value.data()).map(Number.isNaN)).toEqual([true, false, true, false, false]);
    expect(Array.from(await gradient.data()).map(Number.isNaN)).toEqual([true, false, true, false, false]);
    tf.dispose([nan, ones, value, gradient]);
  });
});
