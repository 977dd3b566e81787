// The checks every fused elementwise activation of core's WASM kernels passes (gelu_new, BERT's
// exact gelu): one kernel each way with nothing left behind, float64 and the composite form agreed
// with over sizes that exercise the kernels' tails, and the composite form where the kernels are
// not registered.
import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ActivationKernels } from '../src/fused-activation.js';
import { initRuntime, restoreWasmKernels, useFastWasmKernels } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

/** What {@link describeFusedActivation} checks an activation against. */
export interface FusedActivationCase {
  readonly name: string;
  readonly activation: (x: tf.Tensor) => tf.Tensor;
  readonly kernels: ActivationKernels;
  /** tfjs kernels the composite form runs (Sigmoid, Erf, …), which the fused form must not. */
  readonly compositeKernels: readonly string[];
  /** The activation and its derivative in float64. */
  readonly reference: (x: number) => number;
  readonly slope: (x: number) => number;
  /** Inputs spread over ±`spread`, with `extremes` (zeros, tails, clamps) at their start. */
  readonly spread: number;
  readonly extremes: readonly number[];
  /** Agreement with float64 (value and gradient), and with the composite form on the plain-JS backend. */
  readonly float64Tolerance: { readonly atol: number; readonly rtol: number };
  readonly compositeTolerance: { readonly atol: number; readonly rtol: number };
}

const valueAndGradient = (activation: (x: tf.Tensor) => tf.Tensor, x: tf.Tensor, upstream: tf.Tensor): [tf.Tensor, tf.Tensor] =>
  tf.tidy(() => [activation(x), tf.grad((input: tf.Tensor) => tf.sum(tf.mul(activation(input), upstream)))(x)]);

/** `size` values over ±`spread`, the first ones `extremes`: a size that is not a multiple of 8 exercises the kernels' tails. */
function spreadValues(size: number, spread: number, extremes: readonly number[]): number[] {
  return Array.from({ length: size }, (_, i) => extremes[i] ?? Math.sin(i * 12.9898) * spread * Math.cos(i * 0.37));
}

/** The shared checks of a fused activation, as one describe block. */
export function describeFusedActivation(c: FusedActivationCase): void {
  const inputs = (size: number): number[] => spreadValues(size, c.spread, c.extremes);
  describe(`fused ${c.name} on the WASM backend`, () => {
    beforeAll(async () => {
      await initRuntime();
    });
    afterAll(async () => {
      useFastWasmKernels('wasm');
      await tf.setBackend('wasm');
    });

    it(`runs one kernel forward and one backward (no ${c.compositeKernels.join(' or ')}), and nothing is left behind`, async () => {
      await tf.setBackend('wasm');
      const x = tf.tensor2d(inputs(3 * 37), [3, 37]);
      const upstream = tf.onesLike(x);
      await withoutTensorLeaks(() => {
        const spy = spyOnKernels();
        const [value, gradient] = valueAndGradient(c.activation, x, upstream);
        spy.stop();
        tf.dispose([value, gradient]);
        const names = spy.calls.map((call) => call.kernelName);
        // The value, and the value again inside tf.grad.
        expect(names.filter((name) => name === c.kernels.value)).toHaveLength(2);
        expect(names.filter((name) => name === c.kernels.gradient)).toHaveLength(1);
        for (const composite of c.compositeKernels) expect(names).not.toContain(composite);
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
        const [value, gradient] = valueAndGradient(c.activation, x, upstream);
        const result: [Float32Array, Float32Array] = [(await value.data()) as Float32Array, (await gradient.data()) as Float32Array];
        tf.dispose([x, upstream, value, gradient]);
        return result;
      };
      const [fusedValue, fusedGradient] = await run('wasm');
      const [compositeValue, compositeGradient] = await run('cpu');
      await tf.setBackend('wasm');
      // Float32 inputs; the reference is float64 of the same float32 values.
      const x32 = Float32Array.from(values);
      expectTensorsClose(fusedValue, Array.from(x32, c.reference), c.float64Tolerance);
      expectTensorsClose(fusedGradient, Array.from(x32, (v, i) => weights[i]! * c.slope(v)), c.float64Tolerance);
      expectTensorsClose(fusedValue, compositeValue, c.compositeTolerance);
      expectTensorsClose(fusedGradient, compositeGradient, c.compositeTolerance);
      expect(fusedValue.every(Number.isFinite) && fusedGradient.every(Number.isFinite)).toBe(true);
    });

    it('falls back to the composite form where the kernels are not registered', async () => {
      await tf.setBackend('wasm');
      restoreWasmKernels('wasm');
      try {
        const x = tf.tensor1d(inputs(21));
        const spy = spyOnKernels();
        const value = c.activation(x);
        spy.stop();
        expect(spy.calls.map((call) => call.kernelName)).toEqual(expect.arrayContaining([...c.compositeKernels]));
        const loosest = { atol: Math.max(c.float64Tolerance.atol, c.compositeTolerance.atol), rtol: Math.max(c.float64Tolerance.rtol, c.compositeTolerance.rtol) };
        expectTensorsClose(value, Array.from(Float32Array.from(inputs(21)), c.reference), loosest);
        tf.dispose([x, value]);
      } finally {
        useFastWasmKernels('wasm');
      }
    });
  });
}
