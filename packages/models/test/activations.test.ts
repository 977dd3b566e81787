import * as tf from '@tensorflow/tfjs-core';
import { initRuntime } from '@lora/core';
import { expectTensorsClose, withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, it } from 'vitest';
import { geluTanh } from '../src/index.js';

/** GPT-2's gelu_new in float64, the tanh form as Hugging Face writes it (the independent reference). */
const geluNew = (x: number): number => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

const points = Array.from({ length: 241 }, (_, i) => -8 + i / 15);

describe('geluTanh (gelu_new) with its derivative written out', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it.each(['wasm', 'cpu'])('gives the tanh form and its derivative (central differences in float64) on %s', async (backend) => {
    await tf.setBackend(backend);
    await withoutTensorLeaks(() => {
      const weights = points.map((_, i) => Math.cos(i));
      const x = tf.tensor1d(points);
      const w = tf.tensor1d(weights);
      const [value, gradient] = tf.tidy(() => [geluTanh(x), tf.grad((input: tf.Tensor) => tf.sum(tf.mul(geluTanh(input), w)))(x)]);
      const h = 1e-5;
      expectTensorsClose(value!, points.map(geluNew), { atol: 1e-6, rtol: 1e-5 });
      expectTensorsClose(gradient!, points.map((p, i) => (weights[i]! * (geluNew(p + h) - geluNew(p - h))) / (2 * h)), { atol: 1e-5, rtol: 1e-5 });
      tf.dispose([x, w, value!, gradient!]);
    });
  });
});
