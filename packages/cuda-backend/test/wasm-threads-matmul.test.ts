import { restoreWasmMatMul, useFastWasmMatMul } from '@lora/core';
import { setSimdBatchMatMulHelperMode, simdBatchMatMulHelper } from '@lora/core/internal';
import { expectTensorsClose, withoutTensorLeaks } from '@lora/core/testing';
import * as tf from '@tensorflow/tfjs-core';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { useBestBackend } from '../src/index.node.js';
import { nothingInstalled } from './helpers.js';

// @lora/core's batched SIMD matMul on tfjs's threaded build: the products it takes over
// (attention stacks, LoRA's thin factors) are shared with a helper thread. Checked here against
// tfjs's stock WASM kernels and its plain JS backend (the independent reference).

const random = (shape: number[], seed: number): tf.Tensor => tf.randomNormal(shape, 0, 1, 'float32', seed);

function evaluate(compute: () => tf.Tensor | tf.Tensor[]): { shape: number[]; values: Float32Array }[] {
  return tf.tidy(() => [compute()].flat().map((t) => ({ shape: t.shape, values: t.dataSync() as Float32Array })));
}

/**
 * Within 1e-5 relative to the output's scale: element-wise rtol 1e-5, and atol 1e-5 of its largest
 * magnitude for outputs that cancel to near 0 (the sums run in another order on each kernel, and
 * float32 rounding of k terms grows with k and with the terms' size).
 */
function expectSameScale(actual: Float32Array, expected: Float32Array): void {
  const scale = expected.reduce((largest, value) => Math.max(largest, Math.abs(value)), 1);
  expectTensorsClose(actual, expected, { atol: 1e-5 * scale, rtol: 1e-5 });
}

/** `compute` through core's kernel, tfjs's stock WASM matMul and tfjs's plain JS backend agree. */
async function expectSameAsStock(compute: () => tf.Tensor | tf.Tensor[]): Promise<void> {
  await tf.setBackend('wasm');
  const ours = evaluate(compute);
  restoreWasmMatMul('wasm');
  const stock = evaluate(compute);
  useFastWasmMatMul('wasm');
  await tf.setBackend('cpu');
  const plain = evaluate(compute);
  await tf.setBackend('wasm');
  for (const reference of [stock, plain]) {
    expect(ours.map((result) => result.shape)).toEqual(reference.map((result) => result.shape));
    ours.forEach((result, i) => expectSameScale(result.values, reference[i]!.values));
  }
}

const helper = (): { running: boolean; chunks: number } => {
  const stats = simdBatchMatMulHelper(tf.engine().findBackend('wasm'));
  if (stats === null) throw new Error('the threaded build has no helper thread');
  return stats;
};

beforeAll(async () => {
  await useBestBackend({ importModule: nothingInstalled, threads: 2 });
  // The helper starts asynchronously (products run on the calling thread meanwhile).
  await vi.waitFor(() => expect(helper().running).toBe(true), { timeout: 20_000 });
});

const PRODUCTS = [
  // The shapes of core's single-threaded kernel tests (the small ones stay on one thread)…
  ['attention scores q·kᵀ', [2, 3, 13, 7], [2, 3, 11, 7], false, true],
  ['a thin product (LoRA (x·Aᵀ)·Bᵀ)', [40, 8], [24, 8], false, true],
  // …and ones large enough to be shared, off the 4×8 tile, with odd k.
  ['attention scores q·kᵀ, shared', [2, 4, 67, 33], [2, 4, 61, 33], false, true],
  ['attention output p·v', [2, 4, 67, 61], [2, 4, 61, 35], false, false],
  ['the value gradient pᵀ·dy', [2, 4, 61, 67], [2, 4, 61, 35], true, false],
  ['aᵀ·bᵀ over a stack', [3, 45, 70], [3, 50, 45], true, true],
  ['one matrix times a stack (broadcast)', [70, 45], [6, 45, 52], false, false],
  ['a stack times one thin matrix (LoRA x·Aᵀ)', [6, 90, 64], [8, 64], false, true],
  ['a product with a short k split by columns', [1030, 24], [257, 24], false, true],
  ['a thin transposed left operand (LoRA dA = dyᵀ·x)', [515, 8], [515, 259], true, false],
  ['the small model attention shape', [2, 4, 128, 64], [2, 4, 128, 64], false, true],
] as const;

describe('the batched SIMD matMul on the threaded WASM build', () => {
  it.each(PRODUCTS)('gives the stock kernel result for %s', async (_name, aShape, bShape, transposeA, transposeB) => {
    await withoutTensorLeaks(() => expectSameAsStock(() => tf.matMul(random([...aShape], 1), random([...bShape], 2), transposeA, transposeB)));
  });

  it('gives the stock gradients of attention', async () => {
    await withoutTensorLeaks(() =>
      expectSameAsStock(() => {
        const [dq, dk, dv] = tf.grads((q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.sum(tf.square(tf.matMul(tf.softmax(tf.matMul(q, k, false, true)), v))))([
          random([2, 4, 40, 24], 11),
          random([2, 4, 40, 24], 12),
          random([2, 4, 40, 24], 13),
        ]);
        return [dq!, dk!, dv!];
      }),
    );
  });

  it('has the helper thread compute chunks, and the plain JS results over many consecutive calls of different shapes', async () => {
    const before = helper().chunks;
    await withoutTensorLeaks(async () => {
      const inputs = PRODUCTS.map(([, aShape, bShape], i) => [random([...aShape], 20 + i), random([...bShape], 40 + i)] as const);
      const onWasm = [];
      for (let call = 0; call < 120; call++) {
        const index = call % PRODUCTS.length;
        const [a, b] = inputs[index]!;
        const [, , , transposeA, transposeB] = PRODUCTS[index]!;
        onWasm.push(tf.tidy(() => tf.matMul(a, b, transposeA, transposeB).dataSync() as Float32Array));
      }
      await tf.setBackend('cpu');
      const expected = inputs.map(([a, b], index) => tf.tidy(() => tf.matMul(a, b, PRODUCTS[index]![3], PRODUCTS[index]![4]).dataSync() as Float32Array));
      await tf.setBackend('wasm');
      onWasm.forEach((values, call) => expectSameScale(values, expected[call % PRODUCTS.length]!));
      tf.dispose(inputs.flat());
    });
    expect(helper().chunks).toBeGreaterThan(before);
  });

  it('completes every product on the calling thread while the helper claims nothing', async () => {
    const backend = tf.engine().findBackend('wasm');
    setSimdBatchMatMulHelperMode(backend, 'idle');
    try {
      const before = helper().chunks;
      await withoutTensorLeaks(() => expectSameAsStock(() => PRODUCTS.map(([, aShape, bShape, transposeA, transposeB], i) => tf.matMul(random([...aShape], 60 + i), random([...bShape], 80 + i), transposeA, transposeB))));
      expect(helper().chunks).toBe(before);
    } finally {
      setSimdBatchMatMulHelperMode(backend, 'normal');
    }
  });

  it('lets the process exit by itself (the helper thread does not keep Node running)', async () => {
    // vite-node runs the TypeScript child; it comes with vitest.
    const vitestRequire = createRequire(createRequire(import.meta.url).resolve('vitest/package.json'));
    const viteNode = path.join(path.dirname(vitestRequire.resolve('vite-node/package.json')), 'vite-node.mjs');
    const child = fileURLToPath(new URL('./fixtures/threaded-product-child.ts', import.meta.url));
    const { stdout } = await new Promise<{ stdout: string }>((resolve, reject) => {
      // A hung child is killed after 60 s: execFile then reports an error with `killed` set.
      execFile(process.execPath, [viteNode, child], { cwd: path.dirname(path.dirname(child)), timeout: 60_000 }, (error, out) => (error ? reject(error) : resolve({ stdout: out })));
    });
    const report = JSON.parse(stdout.trim().split('\n').at(-1)!) as { helper: { running: boolean; chunks: number }; tensors: number };
    expect(report.helper.chunks).toBeGreaterThan(0);
    expect(report.tensors).toBe(0);
  });
});
