import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime, LayerNorm } from '../src/index.js';
import { spyOnKernels } from '../src/kernel-spy.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

/** LayerNorm's value and the gradients of Σ c·LayerNorm(x) for x, weight and bias on `backend`. */
async function valueAndGradients(backend: string, shape: number[], scale: number): Promise<{ kernels: string[]; results: Float32Array[] }> {
  await tf.setBackend(backend);
  const dim = shape[shape.length - 1]!;
  const size = shape.reduce((a, b) => a * b, 1);
  const layer = new LayerNorm({ dim, eps: 1e-5 });
  tf.tidy(() => {
    layer.weight.assign(tf.tensor1d(Array.from({ length: dim }, (_, i) => 0.5 + Math.sin(i))));
    layer.bias.assign(tf.tensor1d(Array.from({ length: dim }, (_, i) => Math.cos(i) / 3)));
  });
  // Rows with an offset far from 0 (the mean must be removed before squaring) and mixed scales.
  const x = tf.tensor(
    Array.from({ length: size }, (_, i) => (Math.sin(i * 1.3) + (i % 7) / 3) * scale + 4 * scale),
    shape
  );
  const c = tf.tensor(
    Array.from({ length: size }, (_, i) => Math.cos(i * 0.77)),
    shape
  );
  const spy = spyOnKernels();
  const value = layer.forward(x);
  const { value: _loss, grads } = tf.variableGrads(() => tf.sum(tf.mul(layer.forward(x), c)) as tf.Scalar, [layer.weight, layer.bias]);
  const dx = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(layer.forward(input), c)))(x);
  spy.stop();
  const results = [value, dx, grads[layer.weight.name]!, grads[layer.bias.name]!].map((t) => t.dataSync() as Float32Array);
  tf.dispose([x, c, value, _loss, dx, ...Object.values(grads)]);
  layer.dispose();
  return { kernels: spy.calls.map((call) => call.kernelName), results };
}

describe('LayerNorm: fused WASM kernels against the composite form', () => {
  beforeAll(async () => {
    await initRuntime();
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it.each([
    [[2, 3, 256], 1],
    [[4, 257], 10],
    [[5, 4], 0.01],
    [[1, 7, 3], 100],
  ])('gives the value and every gradient of the plain-JS composite form for %j (scale %f)', async (shape, scale) => {
    const fused = await valueAndGradients('wasm', shape, scale);
    const composite = await valueAndGradients('cpu', shape, scale);
    await tf.setBackend('wasm');
    expect(fused.kernels).toContain('LoraLayerNorm');
    expect(composite.kernels).not.toContain('LoraLayerNorm');
    // Float32 sums in another order (SIMD lanes); dx is a difference of three terms, so it gets an
    // absolute floor scaled to its inputs.
    const [value, dx, dw, db] = fused.results;
    expectTensorsClose(value!, composite.results[0]!, {
      atol: 1e-5,
      rtol: 1e-5,
    });
    expectTensorsClose(dx!, composite.results[1]!, {
      atol: 2e-5 / scale,
      rtol: 1e-4,
    });
    expectTensorsClose(dw!, composite.results[2]!, {
      atol: 1e-5,
      rtol: 1e-4,
    });
    expectTensorsClose(db!, composite.results[3]!, {
      atol: 1e-5,
      rtol: 1e-5,
    });
  });

  it('leaves no tensors behind', async () => {
    await tf.setBackend('wasm');
    await withoutTensorLeaks(async () => {
      await valueAndGradients('wasm', [2, 8, 16], 1);
    });
  });
});
