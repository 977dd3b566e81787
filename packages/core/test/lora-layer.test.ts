import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { AdapterLayer, ConfigError, initRuntime, Linear, LoraAdapter } from '../src/index.js';
import { withoutTensorLeaks } from '../src/testing.js';
import { matmul64, maxRelativeError, randomValues, transpose64 } from './helpers.js';

const IN = 6;
const OUT = 5;
const R = 3;
const N = 4;

/** A LoRA-wrapped Linear whose every value is set from float64 arrays, plus those arrays. */
function setUp(fanInFanOut: boolean, useRslora = false) {
  const w = randomValues(OUT * IN, 11, 0.5); // [out, in]
  const b = randomValues(OUT, 12, 0.1);
  const a = randomValues(R * IN, 13, 0.4); // [r, in]
  const bMatrix = randomValues(OUT * R, 14, 0.3); // [out, r]
  const x = randomValues(N * IN, 15);
  const base = new Linear({ inFeatures: IN, outFeatures: OUT, fanInFanOut });
  base.weight.assign(fanInFanOut ? tf.tensor2d(transpose64(w, OUT, IN), [IN, OUT]) : tf.tensor2d(w, [OUT, IN]));
  base.bias!.assign(tf.tensor1d(b));
  const adapter = new LoraAdapter({ inFeatures: IN, outFeatures: OUT, r: R, alpha: 7, useRslora });
  adapter.loraA.assign(tf.tensor2d(a, [R, IN]));
  adapter.loraB.assign(tf.tensor2d(bMatrix, [OUT, R]));
  const layer = new AdapterLayer(base);
  layer.addAdapter('default', adapter);
  layer.setActiveAdapters(['default']);
  layer.eval();
  const scaling = useRslora ? 7 / Math.sqrt(R) : 7 / R;
  return { w, b, a, bMatrix, x, layer, adapter, scaling };
}

function reference(values: ReturnType<typeof setUp>): number[] {
  const { w, b, a, bMatrix, x, scaling } = values;
  const base = matmul64(x, transpose64(w, OUT, IN), N, IN, OUT);
  const delta = matmul64(matmul64(x, transpose64(a, R, IN), N, IN, R), transpose64(bMatrix, OUT, R), N, R, OUT);
  return base.map((value, i) => value + b[i % OUT]! + scaling * delta[i]!);
}

describe('LoraAdapter', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  for (const fanInFanOut of [false, true]) {
    for (const useRslora of [false, true]) {
      it(`matches a float64 forward when fanInFanOut=${fanInFanOut}, useRslora=${useRslora}`, async () => {
        const values = setUp(fanInFanOut, useRslora);
        await withoutTensorLeaks(() => {
          const x = tf.tensor2d(values.x, [N, IN]);
          const y = values.layer.forward(x);
          expect(maxRelativeError(y.dataSync(), reference(values))).toBeLessThan(1e-5);
          tf.dispose([x, y]);
        });
        values.layer.dispose();
      });
    }
  }

  it('scales by alpha/r, or alpha/sqrt(r) with rsLoRA', () => {
    const plain = new LoraAdapter({ inFeatures: 4, outFeatures: 4, r: 4, alpha: 8 });
    const stabilised = new LoraAdapter({ inFeatures: 4, outFeatures: 4, r: 4, alpha: 8, useRslora: true });
    expect(plain.scaling).toBe(2);
    expect(stabilised.scaling).toBe(4);
    plain.dispose();
    stabilised.dispose();
  });

  it('refuses sizes that are not positive integers, a non-finite alpha and a dropout outside [0, 1) before making any tensor', async () => {
    await withoutTensorLeaks(() => {
      const valid = { inFeatures: 4, outFeatures: 3, r: 2, alpha: 4 };
      const cases: [Partial<typeof valid> & { dropout?: number }, RegExp][] = [
        [{ r: 0 }, /r must be a positive integer, got 0/],
        [{ r: 1.5 }, /r must be a positive integer, got 1\.5/],
        [{ inFeatures: -1 }, /inFeatures must be a positive integer/],
        [{ outFeatures: Number.NaN }, /outFeatures must be a positive integer/],
        [{ alpha: Number.POSITIVE_INFINITY }, /alpha must be a finite number/],
        [{ dropout: 1 }, /dropout must be a probability in \[0, 1\), got 1/],
        [{ dropout: -0.1 }, /dropout must be a probability/],
      ];
      for (const [change, message] of cases) {
        const attempt = () => new LoraAdapter({ ...valid, ...change });
        expect(attempt).toThrow(ConfigError);
        expect(attempt).toThrow(message);
      }
    });
  });

  it('initialises A kaiming-uniform within 1/sqrt(in) and B to zeros, or A ~ N(0, 1/r) for gaussian', () => {
    const adapter = new LoraAdapter({ inFeatures: 400, outFeatures: 30, r: 16, alpha: 16, seed: 5 });
    const a = adapter.loraA.dataSync();
    const bound = 1 / Math.sqrt(400);
    expect(Math.max(...Array.from(a, Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...Array.from(a, Math.abs))).toBeGreaterThan(bound * 0.95);
    expect(Array.from(adapter.loraB.dataSync()).every((v) => v === 0)).toBe(true);
    const gaussian = new LoraAdapter({ inFeatures: 400, outFeatures: 30, r: 16, alpha: 16, init: 'gaussian', seed: 5 });
    const g = Array.from(gaussian.loraA.dataSync());
    const std = Math.sqrt(g.reduce((s, v) => s + v * v, 0) / g.length);
    expect(std).toBeGreaterThan((1 / 16) * 0.9);
    expect(std).toBeLessThan((1 / 16) * 1.1);
    adapter.dispose();
    gaussian.dispose();
  });

  it('has gradients equal to the float64 analytic gradients and to finite differences', async () => {
    const values = setUp(true);
    const { x, a, bMatrix, scaling, adapter, layer } = values;
    const g = randomValues(N * OUT, 16); // dL/dy for L = Σ y ⊙ G
    // dL/dB = s·Gᵀ·(x·Aᵀ)  [out, r];  dL/dA = s·(G·B)ᵀ·x  [r, in]
    const xa = matmul64(x, transpose64(a, R, IN), N, IN, R);
    const expectedB = matmul64(transpose64(g, N, OUT), xa, OUT, N, R).map((v) => v * scaling);
    const gb = matmul64(g, bMatrix, N, OUT, R);
    const expectedA = matmul64(transpose64(gb, N, R), x, R, N, IN).map((v) => v * scaling);
    await withoutTensorLeaks(() => {
      const input = tf.tensor2d(x, [N, IN]);
      const weights = tf.tensor2d(g, [N, OUT]);
      const loss = () => tf.sum(tf.mul(layer.forward(input), weights)) as tf.Scalar;
      const { grads, value } = tf.variableGrads(loss, [adapter.loraA, adapter.loraB]);
      const gradA = grads[adapter.loraA.name]!.dataSync();
      const gradB = grads[adapter.loraB.name]!.dataSync();
      expect(maxRelativeError(gradA, expectedA)).toBeLessThan(1e-5);
      expect(maxRelativeError(gradB, expectedB)).toBeLessThan(1e-5);
      // Central differences through the float32 forward pass (L is linear in each factor, so the
      // only error is float32 rounding of L, ~1e-7·|L|/eps).
      const eps = 1e-2;
      for (const [variable, analytic] of [
        [adapter.loraA, gradA],
        [adapter.loraB, gradB],
      ] as const) {
        const original = variable.dataSync().slice();
        for (const index of [0, 2, variable.size - 1]) {
          const shifted = (delta: number) => {
            const copy = original.slice();
            copy[index]! += delta;
            return tf.tidy(() => {
              variable.assign(tf.tensor(copy, variable.shape));
              return loss().dataSync()[0]!;
            });
          };
          const numeric = (shifted(eps) - shifted(-eps)) / (2 * eps);
          expect(Math.abs(numeric - analytic[index]!)).toBeLessThan(1e-3 * Math.max(1, Math.abs(analytic[index]!)));
        }
        tf.tidy(() => variable.assign(tf.tensor(original, variable.shape)));
      }
      tf.dispose([input, weights, value, ...Object.values(grads)]);
    });
    layer.dispose();
  });

  it('merges W + s·B·A exactly as float64 and unmerges back', async () => {
    const values = setUp(true);
    const { w, a, bMatrix, scaling, layer } = values;
    const delta = matmul64(bMatrix, a, OUT, R, IN);
    const expected = w.map((value, i) => value + scaling * delta[i]!);
    await withoutTensorLeaks(() => {
      const before = layer.base_layer.denseWeight();
      const x = tf.tensor2d(values.x, [N, IN]);
      const unmerged = layer.forward(x);
      layer.merge();
      expect(layer.merged).toBe(true);
      const merged = layer.base_layer.denseWeight();
      expect(maxRelativeError(merged.dataSync(), expected)).toBeLessThan(1e-5);
      const mergedOutput = layer.forward(x);
      expect(maxRelativeError(mergedOutput.dataSync(), unmerged.dataSync())).toBeLessThan(1e-5);
      layer.unmerge();
      const after = layer.base_layer.denseWeight();
      // W + ΔW − ΔW in float32: at most one rounding of |ΔW| per element.
      const restored = after.dataSync();
      const original = before.dataSync();
      const deltaMax = Math.max(...delta.map((v) => Math.abs(v * scaling)));
      for (let i = 0; i < original.length; i++) expect(Math.abs(restored[i]! - original[i]!)).toBeLessThanOrEqual(2 ** -23 * (Math.abs(original[i]!) + deltaMax) * 2);
      tf.dispose([before, x, unmerged, merged, mergedOutput, after]);
    });
    layer.dispose();
  });
});

describe('Linear on WASM', () => {
  it('adds the bias right with and without the fast matMul kernels (tfjs 4.22 fused kernel bug)', async () => {
    const { restoreWasmMatMul, useFastWasmMatMul } = await import('../src/index.js');
    await initRuntime({ backend: 'wasm' });
    const values = setUp(false);
    const x = tf.tensor2d(values.x, [N, IN]);
    const expected = reference({ ...values, scaling: 0 });
    const base = values.layer.base_layer;
    const fast = base.forward(x);
    restoreWasmMatMul('wasm');
    try {
      const plain = base.forward(x);
      expect(maxRelativeError(plain.dataSync(), expected)).toBeLessThan(1e-5);
      plain.dispose();
    } finally {
      useFastWasmMatMul('wasm');
    }
    expect(maxRelativeError(fast.dataSync(), expected)).toBeLessThan(1e-5);
    tf.dispose([x, fast]);
    values.layer.dispose();
  });
});
