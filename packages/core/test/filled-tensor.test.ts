import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime } from '../src/index.js';
import { tensorFilledBy } from '../src/internal.js';
import { withoutTensorLeaks } from '../src/testing.js';
import type { WasmHeapBackend } from '../src/wasm-module.js';

const fillWithIndex = (values: Float32Array): void => {
  for (let i = 0; i < values.length; i++) values[i] = i * 0.5 - 3;
};

describe('tensorFilledBy', () => {
  beforeAll(async () => {
    await initRuntime();
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  for (const backend of ['wasm', 'cpu'] as const) {
    it(`makes a float32 tensor of the shape holding what fill wrote, usable as any other (${backend})`, async () => {
      await tf.setBackend(backend);
      await withoutTensorLeaks(() => {
        const filled = tensorFilledBy([3, 5], fillWithIndex);
        expect(filled.shape).toEqual([3, 5]);
        expect(filled.dtype).toBe('float32');
        expect(Array.from(filled.dataSync())).toEqual(Array.from({ length: 15 }, (_, i) => i * 0.5 - 3));
        // Made inside tidy, it is freed with the scope's other tensors.
        const sum = tf.tidy(() => tf.sum(tensorFilledBy([4], (values) => values.fill(2))));
        expect(sum.dataSync()[0]).toBe(8);
        const empty = tensorFilledBy([0, 3], (values) => expect(values.length).toBe(0));
        expect(empty.shape).toEqual([0, 3]);
        tf.dispose([filled, sum, empty]);
      });
    });

    it(`frees the tensor's memory and passes the error on when fill throws (${backend})`, async () => {
      await tf.setBackend(backend);
      await withoutTensorLeaks(() => {
        const buffers = tf.backend().numDataIds();
        const bytes = tf.memory().numBytes;
        expect(() =>
          tensorFilledBy([64, 64], () => {
            throw new Error('fill failed');
          })
        ).toThrow('fill failed');
        expect(tf.backend().numDataIds()).toBe(buffers);
        expect(tf.memory().numBytes).toBe(bytes);
      });
    });
  }

  it("hands fill the tensor's own memory in the WASM heap (no JavaScript array in between)", async () => {
    await tf.setBackend('wasm');
    await withoutTensorLeaks(() => {
      let handed: Float32Array | null = null;
      const filled = tensorFilledBy([2, 4], (values) => {
        handed = values;
        values.fill(1.5);
      });
      const heap = (tf.backend() as WasmHeapBackend).typedArrayFromHeap(filled);
      expect(handed).not.toBeNull();
      // Compared as booleans: a failing toBe would diff the whole heap.
      expect(handed!.buffer === heap.buffer, 'fill was handed an array over the WASM heap').toBe(true);
      expect(handed!.byteOffset).toBe(heap.byteOffset);
      expect(handed!.length).toBe(8);
      filled.dispose();
    });
  });
});
