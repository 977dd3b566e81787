// Float64 references of a LoRA layer's passes, for the fused kernels' tests (low-rank-train and
// low-rank-linear-train).
import * as tf from '@tensorflow/tfjs-core';
import { expect } from 'vitest';

export const values = (size: number, seed: number): Float32Array => Float32Array.from({ length: size }, (_, i) => Math.sin(i * 0.37 + seed * 1.3));

/** A variable holding `data` (tf.variable copies its initial tensor, which is freed here). */
export function variableOf(data: Float32Array, shape: number[], trainable = true): tf.Variable {
  const initial = tf.tensor(data, shape);
  const variable = tf.variable(initial, trainable);
  initial.dispose();
  return variable;
}

/** y = base + s·(x·Aᵀ)·Bᵀ and, for an upstream gradient dy, its gradients, in float64. */
export function reference(
  x: Float32Array,
  a: Float32Array,
  b: Float32Array,
  base: ArrayLike<number>,
  dy: Float32Array,
  rows: number,
  inFeatures: number,
  rank: number,
  outFeatures: number,
  s: number
) {
  const h = new Float64Array(rows * rank);
  for (let m = 0; m < rows; m++) for (let r = 0; r < rank; r++) for (let k = 0; k < inFeatures; k++) h[m * rank + r]! += x[m * inFeatures + k]! * a[r * inFeatures + k]!;
  const y = new Float64Array(rows * outFeatures);
  const g = new Float64Array(rows * rank);
  for (let m = 0; m < rows; m++) {
    for (let j = 0; j < outFeatures; j++) {
      let sum = base[m * outFeatures + j]!;
      for (let r = 0; r < rank; r++) sum += s * h[m * rank + r]! * b[j * rank + r]!;
      y[m * outFeatures + j] = sum;
    }
    for (let r = 0; r < rank; r++) for (let j = 0; j < outFeatures; j++) g[m * rank + r]! += s * dy[m * outFeatures + j]! * b[j * rank + r]!;
  }
  const dx = new Float64Array(rows * inFeatures);
  const da = new Float64Array(rank * inFeatures);
  const db = new Float64Array(outFeatures * rank);
  for (let m = 0; m < rows; m++) {
    for (let r = 0; r < rank; r++) {
      for (let k = 0; k < inFeatures; k++) {
        dx[m * inFeatures + k]! += g[m * rank + r]! * a[r * inFeatures + k]!;
        da[r * inFeatures + k]! += g[m * rank + r]! * x[m * inFeatures + k]!;
      }
      for (let j = 0; j < outFeatures; j++) db[j * rank + r]! += s * dy[m * outFeatures + j]! * h[m * rank + r]!;
    }
  }
  return { y, dx, da, db };
}

/**
 * Each value within 2⁻¹⁸ of the sum of its terms' absolute values of the float64 result: float32
 * sums of up to ~1000 terms (these shapes) err by about √k·2⁻²⁴ of that sum, 2⁻¹⁴ at the very worst.
 */
export function expectWithinRounding(got: ArrayLike<number>, exact: ArrayLike<number>, magnitude: Float64Array, what: string, bound = 2 ** -18): void {
  expect(got.length).toBe(exact.length);
  const bad = Array.from(got).findIndex((value, i) => !(Math.abs(value - exact[i]!) <= bound * magnitude[i]! + 1e-30));
  if (bad >= 0) expect.fail(`${what}[${bad}]: ${got[bad]} vs ${exact[bad]} (terms' absolute sum ${magnitude[bad]})`);
}

/** op(W)[p, j] (p < in, j < out) of a weight stored [in, out] (`inOut`) or [out, in]. */
function opW(w: ArrayLike<number>, inOut: boolean, inFeatures: number, outFeatures: number, p: number, j: number): number {
  return inOut ? w[p * outFeatures + j]! : w[j * inFeatures + p]!;
}

/**
 * A LoRA layer with its base layer, y = x·op(W) + bias + s·(xa·Aᵀ)·Bᵀ (xa the adapter's input, x
 * itself when null), and for an upstream gradient dy its gradients in float64: dx = dy·op(W)ᵀ + g·A
 * (with a separate xa, dx = dy·op(W)ᵀ and dxa = g·A), dA, dB, and the base's dW (in W's layout) and
 * dbias.
 */
export function linearReference(
  x: Float32Array,
  xa: Float32Array | null,
  w: Float32Array,
  inOut: boolean,
  bias: Float32Array | null,
  a: Float32Array,
  b: Float32Array,
  dy: Float32Array,
  rows: number,
  inFeatures: number,
  rank: number,
  outFeatures: number,
  s: number
) {
  const base = new Float64Array(rows * outFeatures);
  const baseDx = new Float64Array(rows * inFeatures);
  const dw = new Float64Array(inFeatures * outFeatures);
  const dbias = new Float64Array(outFeatures);
  for (let m = 0; m < rows; m++) {
    for (let j = 0; j < outFeatures; j++) {
      let sum = bias === null ? 0 : bias[j]!;
      const g = dy[m * outFeatures + j]!;
      dbias[j]! += g;
      for (let p = 0; p < inFeatures; p++) {
        const weight = opW(w, inOut, inFeatures, outFeatures, p, j);
        sum += x[m * inFeatures + p]! * weight;
        baseDx[m * inFeatures + p]! += g * weight;
        dw[inOut ? p * outFeatures + j : j * inFeatures + p]! += x[m * inFeatures + p]! * g;
      }
      base[m * outFeatures + j] = sum;
    }
  }
  const lora = reference(xa ?? x, a, b, base, dy, rows, inFeatures, rank, outFeatures, s);
  return { ...lora, dx: xa === null ? lora.dx.map((value, i) => value + baseDx[i]!) : baseDx, dxa: lora.dx, dw, dbias };
}
