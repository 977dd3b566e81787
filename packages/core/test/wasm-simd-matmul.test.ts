import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime, restoreWasmMatMul, useFastWasmMatMul } from '../src/index.js';
import { spyOnKernels } from '../src/internal.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';
import { hasSimdBatchMatMul, prepareSimdBatchMatMul, simdKernelBuild } from '../src/wasm-simd-matmul.js';

/** Seeded inputs: the same values on every backend. */
const random = (shape: number[], seed: number): tf.Tensor => tf.randomNormal(shape, 0, 1, 'float32', seed);

function evaluate(compute: () => tf.Tensor | tf.Tensor[]): { shape: number[]; values: Float32Array }[] {
  return tf.tidy(() => [compute()].flat().map((t) => ({ shape: t.shape, values: t.dataSync() as Float32Array })));
}

/**
 * `compute` through core's SIMD kernel, through tfjs's stock WASM matMul and on tfjs's plain-JS
 * backend (the independent reference): all agree to 1e-5 relative. The sums are the same, added in
 * another order, so an output that cancels to near 0 differs by float32 rounding of the terms:
 * hence atol 1e-5 too (the terms here are O(1)).
 */
async function expectSameAsStock(compute: () => tf.Tensor | tf.Tensor[], options: { stockWasmIsWrong?: boolean } = {}): Promise<void> {
  await tf.setBackend('wasm');
  const backend = tf.backend();
  const dataIds = backend.numDataIds();
  const ours = evaluate(compute);
  // Nothing left in the backend: the kernel's scratch buffer is freed.
  expect(backend.numDataIds()).toBe(dataIds);
  restoreWasmMatMul('wasm');
  const stock = evaluate(compute);
  useFastWasmMatMul('wasm');
  await tf.setBackend('cpu');
  const plain = evaluate(compute);
  await tf.setBackend('wasm');
  for (const reference of options.stockWasmIsWrong === true ? [plain] : [stock, plain]) {
    expect(ours.map((r) => r.shape)).toEqual(reference.map((r) => r.shape));
    ours.forEach((result, i) => expectTensorsClose(result.values, reference[i]!.values, { atol: 1e-5, rtol: 1e-5 }));
  }
}

beforeAll(async () => {
  await initRuntime({ backend: 'wasm' });
});

afterAll(async () => {
  await tf.setBackend('wasm');
});

describe('the batched SIMD matMul kernel', () => {
  it('is instantiated asynchronously by initRuntime on wasm (browsers may refuse a synchronous compile), and never on cpu', async () => {
    await tf.setBackend('wasm');
    expect(await prepareSimdBatchMatMul(tf.backend())).toBe(true);
    expect(hasSimdBatchMatMul(tf.backend())).toBe(true);
    expect(await prepareSimdBatchMatMul(tf.findBackend('cpu')!)).toBe(false);
    expect(hasSimdBatchMatMul(tf.findBackend('cpu')!)).toBe(false);
  });

  it('runs on the WASM backend and not on the plain-JS one', () => {
    expect(hasSimdBatchMatMul(tf.engine().findBackend('wasm'))).toBe(true);
    expect(hasSimdBatchMatMul(tf.engine().findBackend('cpu'))).toBe(false);
  });

  it('runs its fused multiply-add build in Node (relaxed SIMD, enabled by the Node entry), the plain one where LORA_WASM_FMA=0 asks', () => {
    // wasm-plain-build.test.ts runs this file again with LORA_WASM_FMA=0.
    expect(simdKernelBuild(tf.engine().findBackend('wasm'))).toBe(process.env['LORA_WASM_FMA'] === '0' ? 'plain' : 'fma');
    expect(simdKernelBuild(tf.engine().findBackend('cpu'))).toBe(null);
  });

  it.each([
    // Sizes that are not multiples of the 4×8 tile, and odd k, reach every edge path.
    ['attention scores q·kᵀ', [2, 3, 13, 7], [2, 3, 11, 7], false, true],
    ['attention output p·v', [2, 3, 13, 11], [2, 3, 11, 9], false, false],
    ['the value gradient pᵀ·dy', [2, 3, 13, 11], [2, 3, 13, 9], true, false],
    ['aᵀ·bᵀ over a stack', [3, 7, 5], [3, 6, 7], true, true],
    ['one matrix times a stack (broadcast)', [5, 9], [4, 9, 6], false, false],
    ['a stack times one matrix, thin (LoRA x·Aᵀ)', [4, 5, 24], [8, 24], false, true],
    ['a thin product (LoRA (x·Aᵀ)·Bᵀ)', [40, 8], [24, 8], false, true],
    ['a thin transposed left operand (LoRA dA = dyᵀ·x)', [40, 8], [40, 24], true, false],
    ['a thin right operand (LoRA dB)', [40, 24], [40, 3], true, false],
    ['few rows times a B read in place, with a partial last panel', [5, 40], [40, 27], false, false],
    ['few transposed rows times a transposed B (packed)', [40, 5], [27, 40], true, true],
    ['k = 16 (row by row) and k = 17 (panel by panel)', [3, 37, 16], [16, 19], false, false],
    ['k = 17, panel by panel', [37, 17], [19, 17], false, true],
    ['one row (decoding a token)', [1, 40], [40, 27], false, false],
    ['three rows times a transposed B (decoding three sequences)', [3, 1, 40], [24, 40], false, true],
    ['a stack of rows, four in all', [2, 2, 33], [33, 20], false, false],
    ['the small model attention shape', [2, 4, 128, 64], [2, 4, 128, 64], false, true],
    // Full panels of a transposed B are packed 4×4 blocks at a time; k % 4 rows and a partial panel are not.
    ['a transposed B: two full panels packed by blocks, k % 4 = 2, a partial panel', [2, 9, 14], [2, 21, 14], false, true],
    // A transposed A whose rows lie ≥ 256 apart, with k ≥ 64 and two panels or more, is copied 16 rows at a time.
    ['a transposed A copied in blocks (full fine-tuning xᵀ·dy): a last block of 11 rows, a partial panel', [70, 267], [70, 21], true, false],
    ['a transposed A 260 rows apart times one panel (read in place: each value is used once)', [70, 260], [70, 8], true, false],
  ] as const)('gives the stock kernel result for %s', async (_name, aShape, bShape, transposeA, transposeB) => {
    await withoutTensorLeaks(() => expectSameAsStock(() => tf.matMul(random([...aShape], 1), random([...bShape], 2), transposeA, transposeB)));
  });

  it('gives zeros for an empty inner dimension and an empty result for an empty batch', async () => {
    await withoutTensorLeaks(() => expectSameAsStock(() => [tf.matMul(tf.zeros([2, 3, 0]), tf.zeros([2, 0, 5])), tf.matMul(tf.zeros([0, 3, 4]), tf.zeros([0, 4, 2]))]));
  });

  it('applies a fused bias and activation after the product (stock WASM gets a stacked bias wrong)', async () => {
    await withoutTensorLeaks(() =>
      expectSameAsStock(
        () => [
          tf.fused.matMul({ a: random([2, 5, 12], 3), b: random([2, 12, 6], 4), bias: random([6], 5), activation: 'relu' }),
          tf.fused.matMul({ a: random([40, 24], 6), b: random([8, 24], 7), transposeB: true, bias: random([8], 8) }),
          tf.fused.matMul({ a: random([2, 5, 12], 9), b: random([2, 12, 6], 10), activation: 'sigmoid' }),
          // One row (decoding), which runs on the SIMD kernel: the bias is added after it.
          tf.fused.matMul({ a: random([1, 40], 16), b: random([40, 24], 17), bias: random([24], 18) }),
        ],
        { stockWasmIsWrong: true },
      ),
    );
  });

  it('gives the stock gradients of attention', async () => {
    await withoutTensorLeaks(() =>
      expectSameAsStock(() => {
        const [dq, dk, dv] = tf.grads((q: tf.Tensor, k: tf.Tensor, v: tf.Tensor) => tf.sum(tf.square(tf.matMul(tf.softmax(tf.matMul(q, k, false, true)), v))))([
          random([2, 2, 9, 5], 11),
          random([2, 2, 9, 5], 12),
          random([2, 2, 9, 5], 13),
        ]);
        return [dq!, dk!, dv!];
      }),
    );
  });

  /** The kernels `a·bᵀ` runs on wasm (operands freed afterwards). */
  function kernelsOfProductWithTransposedB(a: tf.Tensor, b: tf.Tensor): string[] {
    const spy = spyOnKernels('wasm');
    try {
      tf.tidy(() => tf.matMul(a, b, false, true).dataSync());
      return spy.calls.map((call) => call.kernelName);
    } finally {
      spy.stop();
      tf.dispose([a, b]);
    }
  }

  it('computes a product of a few rows (decoding) in one kernel call, reading a transposed weight in place (no Transpose)', () => {
    // XNNPACK would need Bᵀ transposed first, and runs such small products on its thread pool,
    // which waits for its worker at every product: a long wait when another process holds the core.
    expect(kernelsOfProductWithTransposedB(random([2, 1, 40], 19), random([24, 40], 20))).toEqual(['BatchMatMul']);
  });

  it('computes an attention product in one kernel call, reading kᵀ in place (no Transpose)', () => {
    expect(kernelsOfProductWithTransposedB(random([2, 4, 16, 8], 14), random([2, 4, 16, 8], 15))).toEqual(['BatchMatMul']);
  });

  it('computes a weight gradient xᵀ·dy in one kernel call, copying xᵀ in blocks (no Transpose)', () => {
    // XNNPACK would need xᵀ transposed first, and packs dy, a new operand at every step, at every call.
    const [x, dy] = [random([70, 300], 21), random([70, 40], 22)];
    const spy = spyOnKernels('wasm');
    try {
      tf.tidy(() => tf.matMul(x, dy, true, false).dataSync());
      expect(spy.calls.map((call) => call.kernelName)).toEqual(['BatchMatMul']);
    } finally {
      spy.stop();
      tf.dispose([x, dy]);
    }
  });
});
