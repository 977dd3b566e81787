import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime, restoreWasmKernels, ShapeError, useFastWasmKernels } from '../src/index.js';
import { ROTARY_KERNEL, rotaryEmbedding } from '../src/internal.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

/** x [n0, n1, n2, D], tables [n0, t1, t2, D/2] of angles' cosines and sines, upstream weights; values through float32. */
function operands(shape: readonly number[], tableShape: readonly number[]): { x: number[]; cos: number[]; sin: number[]; c: number[] } {
  const size = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);
  const f32 = (values: number[]): number[] => Array.from(Float32Array.from(values));
  const angles = Array.from({ length: size(tableShape) }, (_, i) => 0.37 * i + Math.sin(i));
  return {
    x: f32(Array.from({ length: size(shape) }, (_, i) => Math.sin(i * 1.7) * 3)),
    cos: f32(angles.map(Math.cos)),
    sin: f32(angles.map(Math.sin)),
    c: f32(Array.from({ length: size(shape) }, (_, i) => Math.cos(i * 0.61))),
  };
}

/** The rotation and its gradient (for Σ c·y) in float64, index by index, the tables broadcast where their axis is 1. */
function float64Reference(shape: readonly number[], tableShape: readonly number[], { x, cos, sin, c }: ReturnType<typeof operands>): { y: number[]; dx: number[] } {
  const [n0, n1, n2, d] = shape as [number, number, number, number];
  const [, t1, t2, h] = tableShape as [number, number, number, number];
  const y = new Array<number>(x.length).fill(0);
  const dx = new Array<number>(x.length).fill(0);
  for (let i0 = 0; i0 < n0; i0++)
    for (let i1 = 0; i1 < n1; i1++)
      for (let i2 = 0; i2 < n2; i2++) {
        const row = ((i0 * n1 + i1) * n2 + i2) * d;
        const table = ((i0 * t1 + (t1 === 1 ? 0 : i1)) * t2 + (t2 === 1 ? 0 : i2)) * h;
        for (let j = 0; j < h; j++) {
          const [a, b, co, si] = [x[row + j]!, x[row + h + j]!, cos[table + j]!, sin[table + j]!];
          y[row + j] = a * co - b * si;
          y[row + h + j] = b * co + a * si;
          // ∂(c₁·y₁ + c₂·y₂)/∂a and /∂b.
          const [c1, c2] = [c[row + j]!, c[row + h + j]!];
          dx[row + j] = c1 * co + c2 * si;
          dx[row + h + j] = -c1 * si + c2 * co;
        }
      }
  return { y, dx };
}

function throughOp(shape: number[], tableShape: number[], values: ReturnType<typeof operands>): { kernels: string[]; y: Float32Array; dx: Float32Array } {
  const [x, cos, sin, c] = [tf.tensor(values.x, shape), tf.tensor(values.cos, tableShape), tf.tensor(values.sin, tableShape), tf.tensor(values.c, shape)];
  const spy = spyOnKernels();
  const y = rotaryEmbedding(x, cos, sin);
  const dx = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(rotaryEmbedding(input, cos, sin), c)))(x);
  spy.stop();
  const result = { kernels: spy.calls.map((call) => call.kernelName), y: y.dataSync() as Float32Array, dx: dx.dataSync() as Float32Array };
  tf.dispose([x, cos, sin, c, y, dx]);
  return result;
}

// Heads broadcast ([B, H, T, D] with tables [B, 1, T, D/2]), positions broadcast, none broadcast; halves
// of 4, 3 (no SIMD vector) and 10 (a vector and a tail).
const CASES: [number[], number[]][] = [
  [[2, 3, 5, 8], [2, 1, 5, 4]],
  [[2, 5, 3, 8], [2, 5, 1, 4]],
  [[1, 2, 3, 6], [1, 2, 3, 3]],
  [[2, 2, 7, 20], [2, 1, 7, 10]],
];

describe('rotaryEmbedding', () => {
  beforeAll(async () => {
    await initRuntime();
  });
  afterAll(async () => {
    useFastWasmKernels('wasm');
    await tf.setBackend('wasm');
  });

  it.each(CASES)('on WASM for x %j and tables %j runs one kernel each way, matching float64, and the composite form bit for bit', async (shape, tableShape) => {
    const values = operands(shape, tableShape);
    const reference = float64Reference(shape, tableShape, values);
    await tf.setBackend('wasm');
    const fused = await withoutTensorLeaks(() => throughOp(shape, tableShape, values));
    expect(fused.kernels.filter((name) => name === ROTARY_KERNEL)).toHaveLength(3);
    for (const composite of ['Concat', 'SplitV', 'Sub']) expect(fused.kernels).not.toContain(composite);
    expectTensorsClose(fused.y, reference.y, { atol: 1e-6, rtol: 1e-6 });
    expectTensorsClose(fused.dx, reference.dx, { atol: 1e-6, rtol: 1e-6 });
    restoreWasmKernels('wasm');
    try {
      const composite = throughOp(shape, tableShape, values);
      expect(composite.kernels).not.toContain(ROTARY_KERNEL);
      expect(Array.from(fused.y)).toEqual(Array.from(composite.y));
      expect(Array.from(fused.dx)).toEqual(Array.from(composite.dx));
    } finally {
      useFastWasmKernels('wasm');
    }
    await tf.setBackend('cpu');
    const plain = throughOp(shape, tableShape, values);
    await tf.setBackend('wasm');
    expectTensorsClose(plain.y, reference.y, { atol: 1e-6, rtol: 1e-6 });
    expectTensorsClose(plain.dx, reference.dx, { atol: 1e-6, rtol: 1e-6 });
  });

  it('takes the composite form for other ranks and broadcasts, and refuses tables that are not half of x’s last axis', async () => {
    await tf.setBackend('wasm');
    await withoutTensorLeaks(() =>
      tf.tidy(() => {
        const x = tf.ones([3, 4]);
        const spy = spyOnKernels();
        // Angle 0: the identity.
        const y = rotaryEmbedding(x, tf.ones([3, 2]), tf.zeros([3, 2]));
        spy.stop();
        expect(spy.calls.map((call) => call.kernelName)).not.toContain(ROTARY_KERNEL);
        expect(Array.from(y.dataSync())).toEqual(new Array(12).fill(1));
        expect(() => rotaryEmbedding(x, tf.ones([3, 4]), tf.ones([3, 4]))).toThrow(ShapeError);
        expect(() => rotaryEmbedding(tf.ones([3, 5]), tf.ones([3, 2]), tf.ones([3, 2]))).toThrow(ShapeError);
      }),
    );
  });
});
