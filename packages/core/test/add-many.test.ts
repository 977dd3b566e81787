import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { addMany } from '../src/add-many.js';
import { initRuntime } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { withoutTensorLeaks } from '../src/testing.js';

/** AddN's input counts for `count` tensors: 7 at first, then the running sum and up to 6 more. */
function expectedInputs(count: number): number[] {
  const calls = [Math.min(count, 7)];
  for (let left = count - 7; left > 0; left -= 6) calls.push(1 + Math.min(6, left));
  return calls;
}

describe('addMany', () => {
  beforeAll(async () => {
    await initRuntime();
    await tf.setBackend('cpu');
  });

  it('gives tf.addN\'s values bit for bit, in AddN kernels of at most 7 inputs (tfjs\'s webgpu AddN fails past 7)', () => {
    for (const count of [1, 2, 7, 8, 13, 14, 20]) {
      withoutTensorLeaks(() => {
        // Values of mixed magnitudes, so that another order of additions would round differently.
        const tensors = Array.from({ length: count }, (_, i) => tf.tensor1d([Math.sin(i) * 10 ** (i % 5), Math.cos(i * 1.3) * 1e-3, 1 / (i + 3)]));
        const spy = spyOnKernels();
        const sum = addMany(tensors);
        spy.stop();
        const reference = tf.addN(tensors);
        expect(Array.from(sum.dataSync()), `${count} tensors`).toEqual(Array.from(reference.dataSync()));
        const inputs = spy.calls.filter((call) => call.kernelName === 'AddN').map((call) => Object.keys(call.inputShapes).length);
        // 7 inputs, then 6 more beside the running sum each time.
        expect(inputs, `${count} tensors`).toEqual(expectedInputs(count));
        tf.dispose([sum, reference, ...tensors]);
      });
    }
  });

  it('is differentiable: each input\'s gradient is the output\'s', () => {
    const inputs = Array.from({ length: 9 }, (_, i) => tf.scalar(i + 0.5));
    const gradients = tf.grads((...xs: tf.Tensor[]) => tf.mul(addMany(xs), 3))(inputs);
    expect(gradients.map((gradient) => gradient.dataSync()[0])).toEqual(Array.from({ length: 9 }, () => 3));
    tf.dispose([...inputs, ...gradients]);
  });

  it('refuses no tensors', () => {
    expect(() => addMany([])).toThrow(RangeError);
  });
});
