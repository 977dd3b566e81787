import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fastWasmKernels, initRuntime, keptWeightTransposes, restoreWasmKernels, useFastWasmKernels } from '../src/index.js';
import { spyOnKernels } from '../src/internal.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

/** Seeded inputs: the same values on every backend. */
const random = (shape: number[], seed: number): tf.Tensor => tf.randomNormal(shape, 0, 1, 'float32', seed);
const ints = (values: number[], shape: number[]): tf.Tensor => tf.tensor(values, shape, 'int32');

interface Result {
  readonly shape: number[];
  readonly dtype: tf.DataType;
  readonly values: number[];
}

function evaluate(compute: () => tf.Tensor | tf.Tensor[]): Result[] {
  return tf.tidy(() => [compute()].flat().map((t) => ({ shape: t.shape, dtype: t.dtype, values: Array.from(t.dataSync()) })));
}

/**
 * `compute` with core's WASM kernels, with tfjs's stock WASM kernels, and on tfjs's plain-JS
 * backend: all three must agree (1e-5 relative; data movement is exact, so these agree bit for bit).
 */
async function expectSameAsStock(compute: () => tf.Tensor | tf.Tensor[], options: { stockWasmIsWrong?: boolean } = {}): Promise<void> {
  await tf.setBackend('wasm');
  const ours = evaluate(compute);
  restoreWasmKernels('wasm');
  const stock = evaluate(compute);
  useFastWasmKernels('wasm');
  await tf.setBackend('cpu');
  const plain = evaluate(compute);
  await tf.setBackend('wasm');
  for (const reference of options.stockWasmIsWrong === true ? [plain] : [stock, plain]) {
    expect(ours.map((r) => [r.shape, r.dtype])).toEqual(reference.map((r) => [r.shape, r.dtype]));
    ours.forEach((result, i) => expectTensorsClose(result.values, reference[i]!.values, { atol: 0, rtol: 1e-5 }));
  }
}

beforeAll(async () => {
  await initRuntime({ backend: 'wasm' });
});

afterAll(async () => {
  await tf.setBackend('wasm');
});

describe('useFastWasmKernels', () => {
  it('is applied by initRuntime() and replaces the matMul and data-movement kernels once', () => {
    expect(fastWasmKernels().sort()).toEqual(
      [
        'BatchMatMul',
        'Cast',
        'Concat',
        'GatherV2',
        'Identity',
        'LoraAttention',
        'LoraAttentionGrad',
        'LoraCausalAttention',
        'LoraCausalAttentionGrad',
        'LoraCausalMix',
        'LoraCausalScores',
        'LoraCausalSelfAttention',
        'LoraCausalSelfAttentionGrad',
        'LoraGeluErf',
        'LoraGeluErfGrad',
        'LoraGeluTanh',
        'LoraGeluTanhGrad',
        'LoraLayerNorm',
        'LoraLayerNormGrad',
        'LoraLayerNormWeightGrad',
        'LoraLinearBackward',
        'LoraLinearDropoutForward',
        'LoraLinearForward',
        'LoraLowRankAdd',
        'LoraLowRankBackward',
        'LoraLowRankForward',
        'LoraRmsNorm',
        'LoraRmsNormGrad',
        'LoraRmsNormWeightGrad',
        'LoraRotary',
        'LoraScaledSoftmax',
        'LoraScaledSoftmaxGrad',
        'LoraAdamWUpdate',
        'LoraSensitivityUpdate',
        'LoraAllFinite',
        'LoraCrossEntropy',
        'LoraCrossEntropyGrad',
        'LoraDropout',
        'LoraSilu',
        'LoraSiluGrad',
        'LoraSumOfSquares',
        'SplitV',
        'Sum',
        'Transpose',
        '_FusedMatMul',
      ].sort()
    );
    expect(useFastWasmKernels()).toEqual([]);
  });

  it.each([
    ['clone (Identity)', () => tf.clone(random([3, 5], 1))],
    ['cast to the same dtype', () => tf.cast(random([4, 6], 2), 'float32')],
    ['cast int32 to float32 (left to tfjs)', () => tf.cast(ints([1, -2, 3, 4], [2, 2]), 'float32')],
    ['cast float32 to int32 (left to tfjs)', () => tf.cast(random([2, 3], 3), 'int32')],
    ['the attention head split [B,T,H,D] → [B,H,T,D]', () => tf.transpose(random([2, 5, 3, 4], 4), [0, 2, 1, 3])],
    ['a 3-D permutation keeping the last axis', () => tf.transpose(random([3, 4, 5], 5), [1, 0, 2])],
    ['a 5-D permutation keeping the last axis', () => tf.transpose(random([2, 3, 2, 4, 3], 6), [3, 0, 2, 1, 4])],
    ['a 2-D transpose', () => tf.transpose(random([7, 3], 7))],
    ['a 2-D transpose over several 16×16 tiles with ragged edges', () => tf.transpose(random([67, 129], 21))],
    ['a stack of matrices with the last two axes swapped', () => tf.transpose(random([3, 7, 5], 22), [0, 2, 1])],
    ['an int32 matrix transposed', () => tf.transpose(ints([...Array(30).keys()], [5, 6]))],
    ['a bool matrix transposed (left to tfjs)', () => tf.transpose(tf.cast(ints([1, 0, 0, 1, 1, 0], [2, 3]), 'bool'))],
    ['a 3-D permutation moving the last axis (left to tfjs)', () => tf.transpose(random([2, 3, 4], 23), [2, 0, 1])],
    ['an int32 permutation', () => tf.transpose(ints([...Array(24).keys()], [2, 3, 4]), [1, 0, 2])],
    ['an embedding lookup (gather rows)', () => tf.gather(random([10, 6], 8), ints([3, 0, 9, 3], [4]))],
    ['a gather with 2-D ids', () => tf.gather(random([10, 6], 8), ints([1, 2, 3, 4, 5, 6], [2, 3]))],
    ['a gather on a middle axis', () => tf.gather(random([3, 7, 4], 9), ints([6, 0, 2], [3]), 1)],
    ['a gather on the last axis (negative)', () => tf.gather(random([3, 7], 9), ints([6, 0], [2]), -1)],
    ['a gather of int32 values', () => tf.gather(ints([5, 6, 7, 8, 9, 10], [3, 2]), ints([2, 0], [2]))],
    ['a batched gather (left to tfjs)', () => tf.gather(random([2, 5, 3], 10), ints([1, 4, 0, 2], [2, 2]), 1, 1)],
    ['the q/k/v split on the last axis', () => tf.split(random([2, 3, 12], 11), [4, 4, 4], -1)],
    ['an uneven split on a middle axis', () => tf.split(random([2, 6, 3], 12), [1, 3, 2], 1)],
    ['an even split into a count', () => tf.split(random([4, 6], 13), 2, 0)],
    ['a concat on the last axis', () => tf.concat([random([2, 3, 4], 14), random([2, 3, 2], 15), random([2, 3, 5], 16)], -1)],
    ['a concat on the first axis', () => tf.concat([random([2, 3], 17), random([1, 3], 18)], 0)],
    ['a concat with an empty part', () => tf.concat([random([2, 3], 19), tf.zeros([2, 0]), random([2, 1], 20)], 1)],
    ['a bias gradient: a sum over every axis but the last', () => tf.sum(random([4, 33, 13], 24), [0, 1])],
    ['a sum over the leading axes, kept dimensions, listed out of order', () => tf.sum(random([5, 9], 25), [0], true)],
    ['a sum over the last axis (left to tfjs)', () => tf.sum(random([5, 9], 26), -1)],
    ['an int32 sum over the rows (left to tfjs)', () => tf.sum(ints([...Array(12).keys()], [4, 3]), 0)],
    ['a concat of int32 values', () => tf.concat([ints([1, 2], [1, 2]), ints([3, 4, 5, 6], [2, 2])], 0)],
  ])('gives the stock kernel result for %s', async (_name, compute) => {
    await withoutTensorLeaks(() => expectSameAsStock(compute));
  });

  it('casts to bool as the plain-JS backend does, where the stock WASM kernel stores −1 as 255', async () => {
    await withoutTensorLeaks(() => expectSameAsStock(() => tf.cast(tf.tensor1d([-1.5, 0, 0.25, 2, -0]), 'bool'), { stockWasmIsWrong: true }));
    const stock = await (async () => {
      restoreWasmKernels('wasm');
      try {
        return tf.tidy(() => Array.from(tf.cast(tf.tensor1d([-1, 0.5]), 'bool').dataSync()));
      } finally {
        useFastWasmKernels('wasm');
      }
    })();
    // The reason for this kernel: if tfjs fixes its cast, this fails and the override can go.
    expect(stock).toEqual([255, 0]);
  });

  it('gives the stock gradients through gather, split, concat and the head transposes', async () => {
    await withoutTensorLeaks(() =>
      expectSameAsStock(() => {
        const table = random([9, 8], 21);
        const gradient = tf.grad((x: tf.Tensor) => {
          const rows = tf.gather(x, ints([1, 8, 1, 0, 5, 2], [6]));
          const [a, b] = tf.split(tf.reshape(rows, [2, 3, 8]), [3, 5], -1) as [tf.Tensor, tf.Tensor];
          const heads = tf.transpose(tf.reshape(b, [2, 3, 5, 1]), [0, 2, 1, 3]);
          return tf.sum(tf.mul(tf.concat([a, tf.reshape(tf.transpose(heads, [0, 2, 1, 3]), [2, 3, 5])], -1), random([2, 3, 8], 22)));
        });
        return gradient(table);
      })
    );
  });

  it('shares the data for Identity and same-dtype Cast instead of copying it', async () => {
    await withoutTensorLeaks(() => {
      const x = random([4, 4], 23);
      const copy = tf.clone(x);
      const same = tf.cast(x, 'float32');
      expect(copy.dataId).toBe(x.dataId);
      expect(same.dataId).toBe(x.dataId);
      x.dispose();
      // The shared data lives on until its last tensor is disposed.
      expectTensorsClose(copy, same, { atol: 0, rtol: 0 });
      tf.dispose([copy, same]);
    });
  });

  it('refuses a concat whose parts differ off the axis, as the stock kernels do (it copied past their ends)', async () => {
    await tf.setBackend('wasm');
    await withoutTensorLeaks(() => {
      const [first, second] = [tf.zeros([1, 4, 2, 16]), tf.ones([2, 4, 1, 16])];
      expect(() => tf.concat([first, second], 2)).toThrow(/Error in concat.*does not match/u);
      tf.dispose([first, second]);
    });
  });

  it('throws the stock message for an id outside the table', () => {
    const table = random([3, 2], 24);
    const idsOut = ints([0, 3], [2]);
    expect(() => tf.gather(table, idsOut)).toThrow('GatherV2: the index value 3 is not in [0, 2]');
    tf.dispose([table, idsOut]);
  });
});

describe('frozen weights in the fast WASM matMul', () => {
  /** x·Wᵀ and dy·W-style products of a weight as a Linear uses it, on WASM and the plain-JS backend. */
  async function productsOf(weight: () => tf.Variable, x: tf.Tensor): Promise<{ wasm: number[][]; plain: number[][] }> {
    // x·Wᵀ (a PyTorch-layout Linear), Wᵀ·z and W·xᵀ: the frozen weight transposed as either operand.
    const compute = (): number[][] =>
      tf.tidy(() =>
        [tf.matMul(x, weight(), false, true), tf.matMul(weight(), random([48, 40], 27), true, false), tf.matMul(weight(), x, false, true)].map((t) => Array.from(t.dataSync()))
      );
    const wasm = compute();
    await tf.setBackend('cpu');
    const plain = compute();
    await tf.setBackend('wasm');
    return { wasm, plain };
  }

  /** Run `fn` as where tfjs's XNNPACK has more threads than core's kernel (a browser's threaded build): XNNPACK keeps the dense products. */
  async function withMoreXnnpackThreads(fn: () => Promise<void>): Promise<void> {
    const module = (tf.backend() as unknown as { wasm: { tfjs: { getThreadsCount: () => number } } }).wasm.tfjs;
    const getThreadsCount = module.getThreadsCount;
    module.getThreadsCount = () => 4;
    try {
      await fn();
    } finally {
      module.getThreadsCount = getThreadsCount;
    }
  }

  it('runs a frozen weight’s products on core’s kernel, which reads it transposed in place: no Transpose, no copy kept', async () => {
    await withoutTensorLeaks(async () => {
      const weight = tf.tidy(() => tf.variable(random([48, 32], 25), false, 'frozen-weight-dense'));
      const x = random([40, 32], 26);
      const spy = spyOnKernels('wasm');
      try {
        for (let step = 0; step < 3; step++) tf.tidy(() => tf.matMul(x, weight, false, true).dataSync());
      } finally {
        spy.stop();
      }
      expect(spy.calls.filter((call) => call.kernelName === 'Transpose')).toEqual([]);
      expect(keptWeightTransposes('wasm')).toBe(0);
      const { wasm, plain } = await productsOf(() => weight, x);
      wasm.forEach((values, i) => expectTensorsClose(values, plain[i]!, { atol: 1e-4, rtol: 1e-4 }));
      tf.dispose([weight, x]);
    });
  });

  it('where XNNPACK has more threads, transposes a frozen weight once, follows its assignments and frees the copy with it', async () => {
    await withoutTensorLeaks(() =>
      withMoreXnnpackThreads(async () => {
        // Wider than THIN_DIMENSION: thin products run on the SIMD kernel, which needs no transpose.
        const weight = tf.tidy(() => tf.variable(random([48, 32], 25), false, 'frozen-weight-test'));
        const x = random([40, 32], 26);
        const spy = spyOnKernels('wasm');
        try {
          for (let step = 0; step < 3; step++) tf.tidy(() => tf.matMul(x, weight, false, true).dataSync());
          const weightTransposes = spy.calls.filter((call) => call.kernelName === 'Transpose' && call.inputDataIds['x'] === weight.dataId);
          expect(weightTransposes).toHaveLength(1);
        } finally {
          spy.stop();
        }
        expect(keptWeightTransposes('wasm')).toBe(1);
        let { wasm, plain } = await productsOf(() => weight, x);
        wasm.forEach((values, i) => expectTensorsClose(values, plain[i]!, { atol: 1e-4, rtol: 1e-4 }));

        // A merge assigns the weight: the next product uses the new values, and the old copy is freed.
        tf.tidy(() => weight.assign(tf.add(weight, 1)));
        ({ wasm, plain } = await productsOf(() => weight, x));
        wasm.forEach((values, i) => expectTensorsClose(values, plain[i]!, { atol: 1e-4, rtol: 1e-4 }));
        expect(keptWeightTransposes('wasm')).toBe(1);

        // Trainable again: its data changes every step, so nothing is kept.
        weight.trainable = true;
        ({ wasm, plain } = await productsOf(() => weight, x));
        wasm.forEach((values, i) => expectTensorsClose(values, plain[i]!, { atol: 1e-4, rtol: 1e-4 }));
        expect(keptWeightTransposes('wasm')).toBe(0);
        weight.trainable = false;
        tf.tidy(() => tf.matMul(x, weight, false, true).dataSync());
        expect(keptWeightTransposes('wasm')).toBe(1);
        weight.dispose();
        tf.tidy(() => tf.matMul(x, x, false, true).dataSync());
        expect(keptWeightTransposes('wasm')).toBe(0);
        x.dispose();
      })
    );
  });
});
