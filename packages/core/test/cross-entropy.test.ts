import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CROSS_ENTROPY_GRAD_KERNEL, CROSS_ENTROPY_KERNEL } from '../src/cross-entropy.js';
import { causalLmLoss, classificationLoss, initRuntime } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

/** The loss and its gradient with respect to the logits on `backend`. */
async function lossAndGradient(
  backend: string,
  logitValues: number[],
  shape: [number, number],
  labelValues: number[]
): Promise<{ kernels: string[]; loss: number; gradient: Float32Array }> {
  await tf.setBackend(backend);
  const logits = tf.tensor2d(logitValues, shape);
  const labels = tf.tensor1d(labelValues, 'int32');
  const variable = tf.variable(logits);
  const spied = spyOnKernels();
  const result = tf.variableGrads(() => classificationLoss(variable, labels), [variable]);
  spied.stop();
  const out = { kernels: spied.calls.map((call) => call.kernelName), loss: result.value.dataSync()[0]!, gradient: result.grads[variable.name]!.dataSync() as Float32Array };
  tf.dispose([logits, labels, variable, result.value, ...Object.values(result.grads)]);
  return out;
}

describe('cross-entropy: the fused WASM kernels against the composite form', () => {
  beforeAll(async () => {
    await initRuntime();
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it.each([
    [[6, 7] as [number, number], [0, 6, -100, 3, -100, 2]],
    [[5, 257] as [number, number], [256, -100, 255, 0, 100]],
    [[3, 4] as [number, number], [-100, -100, -100]],
  ])('gives the loss and gradient of the plain-JS composite form for logits %j and labels %j', async (shape, labels) => {
    const logits = Array.from({ length: shape[0] * shape[1] }, (_, i) => Math.sin(i * 1.9) * 8);
    const fused = await lossAndGradient('wasm', logits, shape, labels);
    const composite = await lossAndGradient('cpu', logits, shape, labels);
    await tf.setBackend('wasm');
    expect(fused.kernels).toContain(CROSS_ENTROPY_KERNEL);
    expect(fused.kernels).toContain(CROSS_ENTROPY_GRAD_KERNEL);
    expect(composite.kernels).not.toContain(CROSS_ENTROPY_KERNEL);
    expect(Math.abs(fused.loss - composite.loss)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(composite.loss)));
    expectTensorsClose(fused.gradient, composite.gradient, { atol: 1e-7, rtol: 1e-5 });
  });

  it('gives a NaN loss for a NaN logit, as the composite form', async () => {
    await tf.setBackend('wasm');
    const logits = tf.tensor3d([0.5, Number.NaN, 1, 2, 0, 1], [1, 2, 3]);
    const labels = tf.tensor2d([0, 2], [1, 2], 'int32');
    const loss = causalLmLoss(logits, labels);
    expect(Number.isNaN(loss.dataSync()[0])).toBe(true);
    tf.dispose([logits, labels, loss]);
  });

  it.each(['wasm', 'cpu'])('refuses a label outside the classes other than -100, naming its position (%s)', async (backend) => {
    await tf.setBackend(backend);
    await withoutTensorLeaks(() => {
      const logits = tf.zeros([2, 3, 5]);
      // Position 0 of a row is never a target, and the mask leaves out [1][2]: neither is checked.
      const labels = tf.tensor2d([7, 1, 4, 9, 0, 7], [2, 3], 'int32');
      const mask = tf.tensor2d([1, 1, 1, 1, 1, 0], [2, 3], 'int32');
      tf.dispose(causalLmLoss(logits, labels, mask));
      expect(() => causalLmLoss(logits, labels)).toThrow(
        /^\[@lora\/core\] causalLmLoss: labels\[1\]\[2\] must be an integer from 0 to 4 \(the logits have 5 classes\) or -100 \(ignored\), got 7\. Fix the labels/u
      );
      const negative = tf.tensor2d([0, -1, 2], [1, 3], 'int32');
      const small = tf.zeros([1, 3, 5]);
      expect(() => causalLmLoss(small, negative)).toThrow(/labels\[0\]\[1\] must be .* got -1\./u);
      const classes = tf.zeros([3, 4]);
      const [outside, fraction, valid] = [tf.tensor1d([0, 4, -100], 'int32'), tf.tensor1d([0, 1.5, 2], 'float32'), tf.tensor1d([3, -100, 0], 'int32')];
      expect(() => classificationLoss(classes, outside)).toThrow(/classificationLoss: labels\[1\] must be an integer from 0 to 3 .* got 4\./u);
      expect(() => classificationLoss(classes, fraction)).toThrow(/labels\[1\] .* got 1\.5\./u);
      const loss = classificationLoss(classes, valid);
      expect(loss.dataSync()[0]).toBeCloseTo(Math.log(4), 6);
      tf.dispose([small, outside, fraction, valid, loss]);
      tf.dispose([logits, labels, mask, negative, classes]);
    });
    await tf.setBackend('wasm');
  });

  it('leaves no tensors behind', async () => {
    await withoutTensorLeaks(async () => {
      await lossAndGradient(
        'wasm',
        Array.from({ length: 12 }, (_, i) => i / 3),
        [3, 4],
        [1, -100, 3]
      );
      await tf.setBackend('wasm');
    });
  });
});
