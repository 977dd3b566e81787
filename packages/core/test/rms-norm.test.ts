import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime, restoreWasmKernels, RMSNorm, useFastWasmKernels } from '../src/index.js';
import { RMS_NORM_GRAD_KERNEL, RMS_NORM_KERNEL, RMS_NORM_WEIGHT_GRAD_KERNEL } from '../src/rms-norm.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

const EPS = 1e-6;

/** Inputs of a case: rows of mixed scales and signs, a weight around 1, upstream weights c. */
function operands(shape: readonly number[], scale: number): { x: number[]; w: number[]; c: number[] } {
  const dim = shape[shape.length - 1]!;
  const size = shape.reduce((a, b) => a * b, 1);
  // Values through float32, so float64 computes on the same numbers the kernels see.
  const f32 = (values: number[]): number[] => Array.from(Float32Array.from(values));
  return {
    x: f32(Array.from({ length: size }, (_, i) => (Math.sin(i * 1.3) + ((i % 7) - 3) / 3) * scale)),
    w: f32(Array.from({ length: dim }, (_, i) => 0.5 + Math.sin(i))),
    c: f32(Array.from({ length: size }, (_, i) => Math.cos(i * 0.77))),
  };
}

/** RMSNorm's value and the gradients of Σ c·RMSNorm(x) in float64, written out per row. */
function float64Reference(x: number[], w: number[], c: number[]): { y: number[]; dx: number[]; dw: number[] } {
  const d = w.length;
  const y: number[] = [];
  const dx: number[] = [];
  const dw = new Array<number>(d).fill(0);
  for (let start = 0; start < x.length; start += d) {
    const row = x.slice(start, start + d);
    const r = 1 / Math.sqrt(row.reduce((sum, v) => sum + v * v, 0) / d + EPS);
    const xHat = row.map((v) => v * r);
    const g = xHat.map((_, j) => c[start + j]! * w[j]!);
    const meanGx = g.reduce((sum, v, j) => sum + v * xHat[j]!, 0) / d;
    xHat.forEach((v, j) => {
      y.push(v * w[j]!);
      dx.push(r * (g[j]! - v * meanGx));
      dw[j]! += c[start + j]! * v;
    });
  }
  return { y, dx, dw };
}

/** The value and the gradients for x and the weight through core's RMSNorm on the current backend, and the kernels run. */
function throughLayer(shape: number[], x: number[], w: number[], c: number[]): { kernels: string[]; results: Float32Array[] } {
  const layer = new RMSNorm({ dim: w.length, eps: EPS });
  layer.weight.assign(tf.tensor1d(w));
  const input = tf.tensor(x, shape);
  const upstream = tf.tensor(c, shape);
  const spy = spyOnKernels();
  const value = layer.forward(input);
  const { value: loss, grads } = tf.variableGrads(() => tf.sum(tf.mul(layer.forward(input), upstream)) as tf.Scalar, [layer.weight]);
  const dx = tf.grad((v: tf.Tensor) => tf.sum(tf.mul(layer.forward(v), upstream)))(input);
  spy.stop();
  const results = [value, dx, grads[layer.weight.name]!].map((t) => t.dataSync() as Float32Array);
  tf.dispose([input, upstream, value, loss, dx, ...Object.values(grads)]);
  layer.dispose();
  return { kernels: spy.calls.map((call) => call.kernelName), results };
}

describe('RMSNorm', () => {
  beforeAll(async () => {
    await initRuntime();
  });
  afterAll(async () => {
    useFastWasmKernels('wasm');
    await tf.setBackend('wasm');
  });

  it('has a float64 reference whose gradients are its central differences', () => {
    const { x, w, c } = operands([3, 5], 1.5);
    const loss = (xs: number[], ws: number[]): number => float64Reference(xs, ws, c).y.reduce((sum, v, i) => sum + v * c[i]!, 0);
    const { dx, dw } = float64Reference(x, w, c);
    const h = 1e-6;
    x.forEach((_, i) => {
      const plus = x.map((v, j) => (j === i ? v + h : v));
      const minus = x.map((v, j) => (j === i ? v - h : v));
      expect(Math.abs((loss(plus, w) - loss(minus, w)) / (2 * h) - dx[i]!)).toBeLessThan(1e-8);
    });
    w.forEach((_, i) => {
      const plus = w.map((v, j) => (j === i ? v + h : v));
      const minus = w.map((v, j) => (j === i ? v - h : v));
      expect(Math.abs((loss(x, plus) - loss(x, minus)) / (2 * h) - dw[i]!)).toBeLessThan(1e-8);
    });
  });

  it.each([
    [[2, 3, 256], 1],
    [[4, 257], 10],
    [[5, 4], 0.01],
    [[1, 7, 3], 100],
  ])('on WASM runs one kernel per pass and matches float64 and the plain-JS composite form for %j (scale %f)', async (shape, scale) => {
    const { x, w, c } = operands(shape, scale);
    const reference = float64Reference(x, w, c);
    await tf.setBackend('wasm');
    const fused = throughLayer(shape, x, w, c);
    await tf.setBackend('cpu');
    const composite = throughLayer(shape, x, w, c);
    await tf.setBackend('wasm');
    // The value twice (alone and inside each gradient's forward pass), each gradient once.
    expect(fused.kernels.filter((name) => name === RMS_NORM_KERNEL)).toHaveLength(3);
    expect(fused.kernels.filter((name) => name === RMS_NORM_GRAD_KERNEL)).toHaveLength(1);
    expect(fused.kernels.filter((name) => name === RMS_NORM_WEIGHT_GRAD_KERNEL)).toHaveLength(1);
    for (const composite of ['Square', 'Rsqrt', 'Mean']) expect(fused.kernels).not.toContain(composite);
    expect(composite.kernels).not.toContain(RMS_NORM_KERNEL);
    // dx is a difference of two terms, so it gets an absolute floor scaled to its inputs.
    const [y, dx, dw] = fused.results as [Float32Array, Float32Array, Float32Array];
    expectTensorsClose(y, reference.y, { atol: 1e-6, rtol: 2e-6 });
    expectTensorsClose(dx, reference.dx, { atol: 2e-6 / scale, rtol: 2e-5 });
    expectTensorsClose(dw, reference.dw, { atol: 1e-5, rtol: 2e-5 });
    composite.results.forEach((values, i) => expectTensorsClose(fused.results[i]!, values, { atol: i === 1 ? 2e-5 / scale : 1e-5, rtol: 1e-4 }));
  });

  it('differentiates only the input when the weight is frozen, and leaves nothing behind', async () => {
    await tf.setBackend('wasm');
    const layer = new RMSNorm({ dim: 16, eps: EPS });
    layer.weight.trainable = false;
    const x = tf.randomNormal([2, 8, 16], 0, 1, 'float32', 3);
    await withoutTensorLeaks(() => {
      const spy = spyOnKernels();
      tf.dispose(tf.grad((input: tf.Tensor) => tf.sum(layer.forward(input)))(x));
      spy.stop();
      const names = spy.calls.map((call) => call.kernelName);
      expect(names.filter((name) => name === RMS_NORM_GRAD_KERNEL)).toHaveLength(1);
      expect(names).not.toContain(RMS_NORM_WEIGHT_GRAD_KERNEL);
    });
    x.dispose();
    layer.dispose();
  });

  it('falls back to the composite form where the kernels are not registered', async () => {
    await tf.setBackend('wasm');
    restoreWasmKernels('wasm');
    try {
      const shape = [3, 6];
      const { x, w, c } = operands(shape, 2);
      const { kernels, results } = throughLayer(shape, x, w, c);
      expect(kernels).not.toContain(RMS_NORM_KERNEL);
      expectTensorsClose(results[0]!, float64Reference(x, w, c).y, { atol: 1e-6, rtol: 2e-6 });
    } finally {
      useFastWasmKernels('wasm');
    }
  });
});
