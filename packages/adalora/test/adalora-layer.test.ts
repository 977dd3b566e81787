import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError, initRuntime, Linear } from '@lora/core';
import { LORA_LINEAR_BACKWARD_KERNEL, LORA_LINEAR_DROPOUT_FORWARD_KERNEL, LORA_LINEAR_FORWARD_KERNEL, spyOnKernels, withSeededRandom } from '@lora/core/internal';
import { applyContextFor, layerGradients, runSuiteOnBackend, withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { AdaLoraAdapter } from '../src/index.js';
import { float32, maxRelativeDifference, randomValues } from './helpers.js';

/** Float64 PEFT forward contribution: ((x·(A⊙E)ᵀ)·Bᵀ)·scaling/(ranknum + 1e-5), rows of x. */
function contribution64(x: number[], n: number, A: number[], E: number[], B: number[], r: number, inF: number, outF: number, scale: number): number[] {
  const out = new Array<number>(n * outF).fill(0);
  for (let i = 0; i < n; i++) {
    const h = Array.from({ length: r }, (_, k) => {
      let s = 0;
      for (let j = 0; j < inF; j++) s += x[i * inF + j]! * A[k * inF + j]! * E[k]!;
      return s;
    });
    for (let o = 0; o < outF; o++) {
      let s = 0;
      for (let k = 0; k < r; k++) s += h[k]! * B[o * r + k]!;
      out[i * outF + o] = s * scale;
    }
  }
  return out;
}

describe('AdaLoraAdapter', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it("initialises as PEFT: E = 0, A and B ~ N(0, 0.02); all N(0, 1) with init false", async () => {
    await withoutTensorLeaks(() => {
      const adapter = new AdaLoraAdapter({ inFeatures: 200, outFeatures: 300, initR: 12, loraAlpha: 8, seed: 1 });
      expect(adapter.loraA.shape).toEqual([12, 200]);
      expect(adapter.loraE.shape).toEqual([12, 1]);
      expect(adapter.loraB.shape).toEqual([300, 12]);
      expect(Array.from(adapter.loraE.dataSync()).every((v) => v === 0)).toBe(true);
      const std = (t: tf.Tensor): number => tf.tidy(() => Math.sqrt(tf.mean(tf.square(t)).dataSync()[0]!));
      expect(std(adapter.loraA)).toBeCloseTo(0.02, 3);
      expect(std(adapter.loraB)).toBeCloseTo(0.02, 3);
      const random = new AdaLoraAdapter({ inFeatures: 200, outFeatures: 300, initR: 12, loraAlpha: 8, init: false, seed: 2 });
      expect(std(random.loraE)).toBeGreaterThan(0.5);
      expect(std(random.loraA)).toBeCloseTo(1, 1);
      adapter.dispose();
      random.dispose();
    });
  });

  it('scales by alpha/(initR + 1e-5) before pruning, after pruning and after reloading the pruned adapter', async () => {
    await withoutTensorLeaks(() => {
      const [inF, outF, r, n] = [6, 5, 4, 3];
      const base = new Linear({ inFeatures: inF, outFeatures: outF, fanInFanOut: true, seed: 3 });
      const adapter = new AdaLoraAdapter({ inFeatures: inF, outFeatures: outF, initR: r, loraAlpha: 8 });
      const A = float32(randomValues(r * inF, 1, 0.5));
      const E = float32(randomValues(r, 2, 0.5));
      const B = float32(randomValues(outF * r, 3, 0.5));
      const x = float32(randomValues(n * inF, 4));
      tf.tidy(() => {
        adapter.loraA.assign(tf.tensor2d(A, [r, inF]));
        adapter.loraE.assign(tf.tensor2d(E, [r, 1]));
        adapter.loraB.assign(tf.tensor2d(B, [outF, r]));
      });
      const scale = 8 / (4 + 1e-5);
      const run = (a: AdaLoraAdapter): Float32Array =>
        tf.tidy(() => {
          const input = tf.tensor2d(x, [n, inF]);
          return tf.sub(a.apply(input, tf.zeros([n, outF]), applyContextFor(base)), 0).dataSync() as Float32Array;
        });
      expect(maxRelativeDifference(run(adapter), contribution64(x, n, A, E, B, r, inF, outF, scale))).toBeLessThan(1e-6);
      // Pruning rows 1 and 2 zeroes their E; the scale stays alpha/(initR + 1e-5).
      adapter.applyMask([true, false, false, true]);
      const prunedE = E.map((v, i) => (i === 1 || i === 2 ? 0 : v));
      expect(adapter.rank).toBe(2);
      expect(maxRelativeDifference(run(adapter), contribution64(x, n, A, prunedE, B, r, inF, outF, scale))).toBeLessThan(1e-6);
      // Reloaded at rank 2 (PEFT's resize): same scale, same output.
      const saved = new Map(adapter.savedTensors());
      expect([...saved].map(([k, t]) => [k, t.shape])).toEqual([
        ['lora_A', [2, inF]],
        ['lora_B', [outF, 2]],
        ['lora_E', [2, 1]],
      ]);
      const reloaded = new AdaLoraAdapter({ inFeatures: inF, outFeatures: outF, initR: r, loraAlpha: 8, rankPattern: adapter.rankPattern('pruned') });
      reloaded.loadTensors(saved);
      expect(reloaded.rows).toBe(2);
      expect(reloaded.rankPattern('physical')).toEqual([true, false, false, true]);
      expect(maxRelativeDifference(run(reloaded), run(adapter))).toBe(0);
      // Alpha ≤ 0: PEFT's scaling falls back to r (initR).
      const fallback = new AdaLoraAdapter({ inFeatures: inF, outFeatures: outF, initR: r, loraAlpha: 0 });
      expect(fallback.scalingNumerator).toBe(4);
      tf.dispose([...saved.values()]);
      [base, adapter, reloaded, fallback].forEach((m) => m.dispose());
    });
  });

  it('resizes on load to the saved rank when the config has no pattern, and rejects mis-shaped tensors', async () => {
    await withoutTensorLeaks(() => {
      const adapter = new AdaLoraAdapter({ inFeatures: 6, outFeatures: 5, initR: 4, loraAlpha: 8 });
      adapter.loraA.trainable = false;
      const tensors = new Map<string, tf.Tensor>([
        ['lora_A', tf.ones([3, 6])],
        ['lora_E', tf.ones([3, 1])],
        ['lora_B', tf.ones([5, 3])],
      ]);
      adapter.loadTensors(tensors);
      expect(adapter.rows).toBe(3);
      expect(adapter.loraA.trainable).toBe(false);
      expect(adapter.rankPattern('physical')).toEqual([true, true, true, false]);
      tensors.get('lora_B')!.dispose();
      tensors.set('lora_B', tf.ones([5, 2]));
      expect(() => adapter.loadTensors(tensors)).toThrow(CheckpointError);
      tf.dispose([...tensors.values()]);
      adapter.dispose();
    });
  });

  it('grows a dormant row with E = 0, leaving delta W unchanged', async () => {
    await withoutTensorLeaks(() => {
      const adapter = new AdaLoraAdapter({ inFeatures: 6, outFeatures: 5, initR: 4, loraAlpha: 8, liveRows: 2, init: false, seed: 5 });
      expect(adapter.liveRows()).toEqual([true, true, false, false]);
      expect(Array.from(adapter.loraA.dataSync().slice(12))).toEqual(new Array(12).fill(0));
      const before = adapter.deltaWeight();
      expect(adapter.grow([2], 7)).toEqual([2]);
      const after = adapter.deltaWeight();
      expect(Array.from(after.dataSync())).toEqual(Array.from(before.dataSync()));
      expect(Array.from(adapter.loraA.dataSync().slice(12, 18)).every((v) => v !== 0)).toBe(true);
      expect(adapter.rank).toBe(3);
      expect(adapter.rankPattern('pruned')).toEqual([true, true, true, false]);
      tf.dispose([before, after]);
      adapter.dispose();
    });
  });
});

// WASM computes a single AdaLoRA adapter's layer through applyWithBase (core's fused LoRA kernels,
// Q ⊙ Λ as the down-projection); the plain-JS backend has no such kernels and declines.
describe.each(['wasm', 'cpu'])('AdaLoraAdapter.applyWithBase on the %s backend', (backend) => {
  runSuiteOnBackend(backend);

  it('equals the base layer and apply() for the output and every gradient, with and without dropout', async () => {
    await withoutTensorLeaks(() => {
      const [inF, outF, r, rows] = [6, 5, 4, 40];
      for (const [fanInFanOut, dropout] of [
        [true, 0],
        [false, 0],
        [true, 0.5],
      ] as const) {
        const base = new Linear({ inFeatures: inF, outFeatures: outF, fanInFanOut, seed: 3 });
        const adapter = new AdaLoraAdapter({ inFeatures: inF, outFeatures: outF, initR: r, loraAlpha: 8, dropout, init: false, seed: 4 });
        const x = tf.tensor2d(randomValues(rows * inF, 5), [rows, inF]);
        const weights = tf.tensor2d(randomValues(rows * outF, 6), [rows, outF]);
        const context = applyContextFor(base, { training: true });
        // The same seeded scope draws the same dropout mask on both paths (one draw of x's shape each).
        const fusedForward = (input: tf.Tensor): tf.Tensor | null => withSeededRandom(7, () => adapter.applyWithBase(input, context));
        const composedForward = (input: tf.Tensor): tf.Tensor => withSeededRandom(7, () => adapter.apply(input, base.forward(input), context));
        const spy = spyOnKernels();
        const whole = fusedForward(x);
        spy.stop();
        if (backend === 'cpu') {
          expect(whole).toBeNull();
        } else {
          const kernel = dropout > 0 ? LORA_LINEAR_DROPOUT_FORWARD_KERNEL : LORA_LINEAR_FORWARD_KERNEL;
          expect(spy.calls.filter((call) => call.kernelName === kernel)).toHaveLength(1);
          const variables = [adapter.loraA, adapter.loraE, adapter.loraB];
          const gradientsOf = (forward: (input: tf.Tensor) => tf.Tensor): tf.Tensor[] => layerGradients(forward, x, weights, variables);
          const backward = spyOnKernels();
          const fused = gradientsOf((input) => fusedForward(input)!);
          backward.stop();
          expect(backward.calls.filter((call) => call.kernelName === LORA_LINEAR_BACKWARD_KERNEL).length).toBeGreaterThan(0);
          const expected = [tf.tidy(() => composedForward(x)), ...gradientsOf(composedForward)];
          const errors = [whole!, ...fused].map((tensor, index) => maxRelativeDifference(tensor.dataSync(), expected[index]!.dataSync()));
          console.log(`AdaLoRA fused vs composed (fanInFanOut ${fanInFanOut}, dropout ${dropout}): output, dA, dE, dB, dx max rel ${errors.map((e) => e.toExponential(2)).join(', ')}`);
          for (const error of errors) expect(error).toBeLessThan(1e-5);
          tf.dispose([whole!, ...fused, ...expected]);
        }
        tf.dispose([x, weights]);
        base.dispose();
        adapter.dispose();
      }
    });
  });

  it('declines a rank-0 module, whose layer is the base alone', async () => {
    await withoutTensorLeaks(() => {
      const base = new Linear({ inFeatures: 6, outFeatures: 5, seed: 3 });
      const adapter = new AdaLoraAdapter({ inFeatures: 6, outFeatures: 5, initR: 4, loraAlpha: 8, rankPattern: [false, false, false, false] });
      const x = tf.ones([3, 6]);
      expect(adapter.rows).toBe(0);
      expect(adapter.applyWithBase(x, applyContextFor(base))).toBeNull();
      x.dispose();
      base.dispose();
      adapter.dispose();
    });
  });
});
