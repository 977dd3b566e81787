import * as tf from '@tensorflow/tfjs-core';
import { AdapterLayer, initRuntime } from '@lora/core';
import { describeAdapterPlugin, withoutTensorLeaks } from '@lora/core/testing';
import { QuantLinear, quant } from '@lora/quant';
import { beforeAll, describe, expect, it } from 'vitest';
import { dora, DoraAdapter } from '../src/index.js';
import { doraApply64, doraNorm64, linear64, makeLinear, maxAbsoluteError, maxRelativeError, randomValues, setAdapterTensors, type DoraParameters } from './helpers.js';

const validConfig = { r: 4, loraAlpha: 8, targetModules: ['query', 'conv'] };
const invalidConfigs = [{ r: 0 }, { useDora: false }];

// QDoRA: DoRA over @lora/quant's 4-bit base. With merge 'dequantize' the merged weight is kept in
// float32, so merged ≡ unmerged at core's default tolerance.
describe("QDoRA, merge: 'dequantize'", () => {
  describeAdapterPlugin(dora({ seed: 5 }), { validConfig, invalidConfigs, extraPlugins: [quant({ merge: 'dequantize' })], transforms: ['quant'] });
});

describe('DoraAdapter over a QuantLinear', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('uses the dequantized weight for the magnitude, the norm and the forward, and trains', async () => {
    await withoutTensorLeaks(() => {
      const IN = 64;
      const OUT = 8;
      const ROWS = 3;
      const W = randomValues(OUT * IN, 60, 0.2);
      const bias = randomValues(OUT, 61, 0.1);
      const linear = makeLinear({ W, bias, inF: IN, out: OUT });
      const base = QuantLinear.fromLayer(linear, { type: 'nf4' });
      linear.dispose();
      const dequantizedTensor = base.denseWeight();
      const dequantized = Array.from(dequantizedTensor.dataSync());
      dequantizedTensor.dispose();
      const adapter = new DoraAdapter({ base, r: 2, alpha: 4 });
      const zero: DoraParameters = { A: new Array<number>(2 * IN).fill(0), B: new Array<number>(OUT * 2).fill(0), m: [], s: 2, r: 2 };
      expect(maxRelativeError(adapter.magnitude.dataSync(), doraNorm64(dequantized, zero, OUT, IN))).toBeLessThan(1e-6);
      const p: DoraParameters = { A: randomValues(2 * IN, 62, 0.2), B: randomValues(OUT * 2, 63, 0.2), m: randomValues(OUT, 64, 0.2).map((v) => Math.fround(1 + v)), s: 2, r: 2 };
      setAdapterTensors(adapter, { 'lora_A.weight': p.A, 'lora_B.weight': p.B, lora_magnitude_vector: p.m });
      const layer = new AdapterLayer(base);
      layer.addAdapter('default', adapter);
      layer.setActiveAdapters(['default']);
      layer.eval();
      const X = randomValues(ROWS * IN, 65, 1);
      const x = tf.tensor2d(X, [ROWS, IN]);
      const y = layer.forward(x);
      const expected = doraApply64({ x: X, rows: ROWS, inF: IN, out: OUT, result: linear64(X, dequantized, bias, ROWS, IN, OUT), bias, W: dequantized, p });
      const error = maxRelativeError(y.dataSync(), expected);
      console.log(`QDoRA forward vs float64 on the dequantized weight: max rel error ${error.toExponential(2)}`);
      expect(error).toBeLessThan(1e-5);
      const { grads, value } = tf.variableGrads(() => tf.sum(tf.square(layer.forward(x))) as tf.Scalar, [adapter.loraA, adapter.loraB, adapter.magnitude]);
      for (const gradient of Object.values(grads)) {
        const values = Array.from(gradient.dataSync());
        expect(values.every(Number.isFinite)).toBe(true);
        expect(values.some((v) => v !== 0)).toBe(true);
      }
      tf.dispose([x, y, value, ...Object.values(grads)]);
      layer.dispose();
    });
  });

  it("re-quantizes on merge with merge 'requantize' (lossy, reported) and unmerges to the original 4-bit weight exactly", async () => {
    await withoutTensorLeaks(() => {
      const IN = 64;
      const OUT = 8;
      const W = randomValues(OUT * IN, 70, 0.2);
      const linear = makeLinear({ W, bias: null, inF: IN, out: OUT });
      const base = QuantLinear.fromLayer(linear, { type: 'nf4' });
      linear.dispose();
      const originalTensor = base.denseWeight();
      const original = Array.from(originalTensor.dataSync());
      originalTensor.dispose();
      const adapter = new DoraAdapter({ base, r: 2, alpha: 4 });
      const p: DoraParameters = {
        A: randomValues(2 * IN, 71, 0.2),
        B: randomValues(OUT * 2, 72, 0.05),
        m: Array.from(adapter.magnitude.dataSync()).map((v, j) => Math.fround(v * (1 + 0.15 * randomValues(OUT, 73)[j]!))),
        s: 2,
        r: 2,
      };
      setAdapterTensors(adapter, { 'lora_A.weight': p.A, 'lora_B.weight': p.B, lora_magnitude_vector: p.m });
      const layer = new AdapterLayer(base);
      layer.addAdapter('default', adapter);
      layer.setActiveAdapters(['default']);
      layer.eval();
      const x = tf.tensor2d(randomValues(4 * IN, 74, 1), [4, IN]);
      const unmerged = layer.forward(x);
      const notes = layer.merge();
      expect(notes.join(' ')).toContain('re-quantized');
      const merged = layer.forward(x);
      const mergedError = maxAbsoluteError(merged.dataSync(), unmerged.dataSync());
      layer.unmerge();
      const restoredTensor = base.denseWeight();
      const restoredError = maxAbsoluteError(restoredTensor.dataSync(), original) / Math.max(...original.map(Math.abs));
      console.log(`QDoRA requantize: merged vs unmerged max abs ${mergedError.toExponential(2)}; unmerged 4-bit weight off by ${restoredError.toExponential(2)} of absmax`);
      // NF4's step is at most ~0.3 of a block's absmax: one re-quantization on merge. Unmerge restores the
      // pre-merge bytes from the base's snapshot, so the weight is exactly the original.
      expect(mergedError).toBeLessThan(0.5);
      expect(restoredError).toBe(0);
      tf.dispose([x, unmerged, merged, restoredTensor]);
      layer.dispose();
    });
  });
});
