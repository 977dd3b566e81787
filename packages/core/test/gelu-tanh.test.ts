import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime, restoreWasmKernels, useFastWasmKernels } from '../src/index.js';
import { geluTanh, GELU_TANH_GRAD_KERNEL, GELU_TANH_KERNEL } from '../src/internal.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

/** gelu_new and its derivative in float64 (the tanh form, as Hugging Face writes it). */
const C = Math.sqrt(2 / Math.PI);
const geluNew = (x: number): number => 0.5 * x * (1 + Math.tanh(C * (x + 0.044715 * x ** 3)));
const geluNewSlope = (x: number): number => {
  const t = Math.tanh(C * (x + 0.044715 * x ** 3));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C * (1 + 3 * 0.044715 * x * x);
};

/** Values over the whole range, the extremes (exp clamped, σ = 0 or 1), zeros, and a size that is not a multiple of 8 (the kernel's tail). */
function inputs(size: number): number[] {
  const values = Array.from({ length: size }, (_, i) => Math.sin(i * 12.9898) * 12 * Math.cos(i * 0.37));
  values.splice(0, 8, 0, -0, 100, -100, 1e-8, -1e-8, 30, -30);
  return values;
}

const valueAndGradient = (x: tf.Tensor, upstream: tf.Tensor): [tf.Tensor, tf.Tensor] =>
  tf.tidy(() => [geluTanh(x), tf.grad((input: tf.Tensor) => tf.sum(tf.mul(geluTanh(input), upstream)))(x)]);

describe('fused gelu_new on the WASM backend', () => {
  beforeAll(async () => {
    await initRuntime();
  });
  afterAll(async () => {
    useFastWasmKernels('wasm');
    await tf.setBackend('wasm');
  });

  it('runs one kernel forward and one backward, and nothing is left behind', async () => {
    await tf.setBackend('wasm');
    const x = tf.tensor2d(inputs(3 * 37), [3, 37]);
    const upstream = tf.onesLike(x);
    await withoutTensorLeaks(() => {
      const spy = spyOnKernels();
      const [value, gradient] = valueAndGradient(x, upstream);
      spy.stop();
      tf.dispose([value, gradient]);
      const names = spy.calls.map((call) => call.kernelName);
      // The value, and the value again inside tf.grad.
      expect(names.filter((name) => name === GELU_TANH_KERNEL)).toHaveLength(2);
      expect(names.filter((name) => name === GELU_TANH_GRAD_KERNEL)).toHaveLength(1);
      expect(names).not.toContain('Sigmoid');
    });
    tf.dispose([x, upstream]);
  });

  it.each([7, 8, 1001, 65_539])('matches float64 and the composite form (plain-JS backend) on %i values, extremes included', async (size) => {
    const values = inputs(size);
    const weights = values.map((_, i) => Math.cos(i * 0.71));
    const run = async (backend: string): Promise<[Float32Array, Float32Array]> => {
      await tf.setBackend(backend);
      const x = tf.tensor1d(values);
      const upstream = tf.tensor1d(weights);
      const [value, gradient] = valueAndGradient(x, upstream);
      const result: [Float32Array, Float32Array] = [(await value.data()) as Float32Array, (await gradient.data()) as Float32Array];
      tf.dispose([x, upstream, value, gradient]);
      return result;
    };
    const [fusedValue, fusedGradient] = await run('wasm');
    const [compositeValue, compositeGradient] = await run('cpu');
    await tf.setBackend('wasm');
    // Float32 inputs; the reference is float64 of the same float32 values. The gate's argument
    // is rounded to float32 in both forms, which bounds the agreement near |x| ≈ 10 (σ ≈ e^−u).
    const x32 = Float32Array.from(values);
    expectTensorsClose(fusedValue, Array.from(x32, geluNew), { atol: 1e-6, rtol: 2e-5 });
    expectTensorsClose(fusedGradient, Array.from(x32, (v, i) => weights[i]! * geluNewSlope(v)), { atol: 1e-6, rtol: 2e-5 });
    expectTensorsClose(fusedValue, compositeValue, { atol: 1e-6, rtol: 1e-5 });
    expectTensorsClose(fusedGradient, compositeGradient, { atol: 1e-6, rtol: 1e-5 });
    expect(fusedValue.every(Number.isFinite) && fusedGradient.every(Number.isFinite)).toBe(true);
  });

  it('falls back to the composite form where the kernels are not registered', async () => {
    await tf.setBackend('wasm');
    restoreWasmKernels('wasm');
    try {
      const x = tf.tensor1d(inputs(21));
      const spy = spyOnKernels();
      const value = geluTanh(x);
      spy.stop();
      expect(spy.calls.map((call) => call.kernelName)).toContain('Sigmoid');
      expectTensorsClose(value, Array.from(Float32Array.from(inputs(21)), geluNew), { atol: 1e-6, rtol: 2e-5 });
      tf.dispose([x, value]);
    } finally {
      useFastWasmKernels('wasm');
    }
  });
});
