import * as tf from '@tensorflow/tfjs-core';
import path from 'node:path';
import { AdapterLayer, Linear, type AdapterInstance } from '@lora/core';
import { matmul64, seededRandomValues, transpose64 } from '@lora/core/testing';

export { linearTreeFromCheckpoint, matmul64, maxAbsoluteError, maxRelativeError, transpose64 } from '@lora/core/testing';

/** The reference fixtures folder (repository root `fixtures/reference`). */
export const FIXTURES = path.resolve(__dirname, '../../../fixtures/reference');

/** Deterministic pseudo-random float32-representable numbers (mulberry32) in [−scale, scale). */
export function randomValues(count: number, seed: number, scale = 1): number[] {
  return seededRandomValues(count, seed, scale).map((value) => Math.fround(value));
}

/** Parameters of one DoRA adapter, float32-representable, row-major, PyTorch layouts. */
export interface DoraParameters {
  readonly A: number[]; // [r, in]
  readonly B: number[]; // [out, r]
  readonly m: number[]; // [out]
  readonly s: number;
  readonly r: number;
}

/** The row norms ‖W + s·B·A‖ (float64), W [out, in]. */
export function doraNorm64(W: readonly number[], p: DoraParameters, out: number, inF: number): number[] {
  const BA = matmul64(p.B, p.A, out, p.r, inF);
  const norms: number[] = [];
  for (let j = 0; j < out; j++) {
    let sum = 0;
    for (let i = 0; i < inF; i++) sum += (W[j * inF + i]! + p.s * BA[j * inF + i]!) ** 2;
    norms.push(Math.sqrt(sum));
  }
  return norms;
}

/**
 * PEFT's DoRA output in float64 (eval mode / no dropout): `result + (g − 1)·(result − b) + g·s·x·Aᵀ·Bᵀ`,
 * with `result` the output so far and `g = m / n`. `norm` defaults to ‖W + s·B·A‖.
 */
export function doraApply64(options: {
  x: readonly number[];
  rows: number;
  inF: number;
  out: number;
  result: readonly number[];
  bias: readonly number[] | null;
  W: readonly number[];
  p: DoraParameters;
  norm?: readonly number[];
}): number[] {
  const { x, rows, inF, out, result, bias, W, p } = options;
  const n = options.norm ?? doraNorm64(W, p, out, inF);
  const xA = matmul64(x, transpose64(p.A, p.r, inF), rows, inF, p.r);
  const lora = matmul64(xA, transpose64(p.B, out, p.r), rows, p.r, out);
  const y: number[] = [];
  for (let k = 0; k < rows; k++)
    for (let j = 0; j < out; j++) {
      const g = p.m[j]! / n[j]!;
      const baseResult = result[k * out + j]! - (bias ? bias[j]! : 0);
      y.push(result[k * out + j]! + (g - 1) * baseResult + g * p.s * lora[k * out + j]!);
    }
  return y;
}

/** x·Wᵀ + b in float64. */
export function linear64(x: readonly number[], W: readonly number[], bias: readonly number[] | null, rows: number, inF: number, out: number): number[] {
  const y = matmul64(x, transpose64(W, out, inF), rows, inF, out);
  if (bias) for (let k = 0; k < rows; k++) for (let j = 0; j < out; j++) y[k * out + j]! += bias[j]!;
  return y;
}

/** A Linear with given values: `weight` [out, in] (stored transposed when `fanInFanOut`), `bias` [out] or null. */
export function makeLinear(options: { W: readonly number[]; bias: readonly number[] | null; inF: number; out: number; fanInFanOut?: boolean }): Linear {
  const { W, bias, inF, out } = options;
  const fanInFanOut = options.fanInFanOut ?? false;
  const linear = new Linear({ inFeatures: inF, outFeatures: out, bias: bias !== null, fanInFanOut });
  tf.tidy(() => {
    const weight = tf.tensor2d([...W], [out, inF]);
    linear.weight.assign(fanInFanOut ? tf.transpose(weight) : weight);
    if (bias) linear.bias!.assign(tf.tensor1d([...bias]));
  });
  return linear;
}

/** Assign named values to an adapter's variables (by saved key). */
export function setAdapterTensors(instance: AdapterInstance, values: Readonly<Record<string, readonly number[]>>): void {
  for (const [key, variable] of instance.namedTensors()) {
    const value = values[key];
    if (value) tf.tidy(() => variable.assign(tf.tensor([...value], variable.shape)));
  }
}

/** An AdapterLayer around `base` with the given adapters added and active. */
export function wrap(base: Linear, adapters: Readonly<Record<string, AdapterInstance>>): AdapterLayer {
  const layer = new AdapterLayer(base);
  for (const [name, instance] of Object.entries(adapters)) layer.addAdapter(name, instance);
  layer.setActiveAdapters(Object.keys(adapters));
  layer.eval();
  return layer;
}

/** Units in the last place of a float32 value (the spacing of float32 numbers at |value|). */
export function ulp32(value: number): number {
  const magnitude = Math.abs(value);
  if (magnitude < 2 ** -126) return 2 ** -149;
  return 2 ** (Math.floor(Math.log2(magnitude)) - 23);
}

