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
    // Another negative label means class 0 and one past the classes selects nothing (the composite form's rules).
    [[5, 257] as [number, number], [256, -3, 257, 0, 100]],
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
