import * as tf from '@tensorflow/tfjs-core';
import { initRuntime } from '@lora/core';
import { expectTensorsClose, withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { useFastWasmMatMul } from '../src/index.js';

describe('useFastWasmMatMul', () => {
  beforeAll(async () => {
    await initRuntime({ backend: 'wasm' });
  });

  it('gives the same products for every transpose combination, fused or not, and their gradients', async () => {
    const a = tf.randomNormal([3, 5, 7], 0, 1, 'float32', 1);
    const b = tf.randomNormal([3, 7, 4], 0, 1, 'float32', 2);
    const bias = tf.randomNormal([4], 0, 1, 'float32', 3);
    const at = tf.transpose(a, [0, 2, 1]);
    const bt = tf.transpose(b, [0, 2, 1]);
    const cases = (): tf.Tensor[] => [
      tf.matMul(a, b),
      tf.matMul(at, b, true, false),
      tf.matMul(a, bt, false, true),
      tf.matMul(at, bt, true, true),
      tf.fused.matMul({ a: at, b: bt, transposeA: true, transposeB: true, bias, activation: 'relu' }),
      ...tf.grads((x: tf.Tensor, y: tf.Tensor) => tf.sum(tf.square(tf.matMul(x, y, false, true))))([a, bt]),
    ];
    const before = tf.tidy(() => cases().map((t) => tf.keep(t)));
    expect(useFastWasmMatMul()).toBe(true);
    expect(useFastWasmMatMul()).toBe(true);
    await withoutTensorLeaks(() => {
      const after = cases();
      after.forEach((t, i) => expectTensorsClose(t, before[i]!, { atol: 1e-5, rtol: 1e-5 }));
      tf.dispose(after);
    });
    tf.dispose([a, b, bias, at, bt, ...before]);
  });
});
