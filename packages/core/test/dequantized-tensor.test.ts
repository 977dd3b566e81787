import * as tf from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRuntime } from '../src/index.js';
import { dequantized4bitTensor, type Packed4bit } from '../src/internal.js';
import { withoutTensorLeaks } from '../src/testing.js';

/** Deterministic bytes and floats (a 32-bit LCG), so each case's codes are the same every run. */
function generator(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

function codesFor(length: number, blockSize: number, seed: number): Packed4bit {
  const next = generator(seed);
  const packed = Uint8Array.from({ length: Math.ceil(length / 2) }, () => Math.floor(next() * 256));
  // Scales of several magnitudes, a zero block among them (an all-zero block of the weight).
  const absmax = Float32Array.from({ length: Math.ceil(length / blockSize) }, (_, block) => (block === 1 ? 0 : next() * 10 ** Math.floor(next() * 6 - 3)));
  // A table with negative entries, zero and values whose products round: NF4's shape, not its values.
  const code = Float32Array.from({ length: 16 }, (_, k) => (k === 7 ? 0 : (k - 7.3) / 8.1 + next() * 1e-3));
  return { packed, absmax, code, blockSize };
}

/** The definition, value by value: float32(code[nibble i] · absmax[⌊i / blockSize⌋]), nibble 2k the high one of byte k. */
function dequantizedByDefinition(length: number, { packed, absmax, code, blockSize }: Packed4bit): number[] {
  return Array.from({ length }, (_, i) => {
    const byte = packed[i >> 1]!;
    return Math.fround(code[i % 2 === 0 ? byte >> 4 : byte & 0x0f]! * absmax[Math.floor(i / blockSize)]!);
  });
}

describe('dequantized4bitTensor', () => {
  beforeAll(async () => {
    await initRuntime();
  });
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it("gives each value's float32 product bit for bit on WASM: whole and partial blocks, odd block sizes and lengths", async () => {
    await tf.setBackend('wasm');
    await withoutTensorLeaks(() => {
      const cases: [number[], number][] = [
        [[768, 256], 64],
        [[121], 64],
        [[31], 64],
        [[33], 64],
        [[2, 32], 32],
        [[1000], 128],
        [[37], 5],
        [[6, 7], 7],
        [[9], 1],
      ];
      for (const [index, [shape, blockSize]] of cases.entries()) {
        const length = shape.reduce((product, dimension) => product * dimension, 1);
        const codes = codesFor(length, blockSize, index + 1);
        const buffers = tf.backend().numDataIds();
        const tensor = dequantized4bitTensor(shape, codes);
        expect(tensor).not.toBeNull();
        expect(tensor!.shape).toEqual(shape);
        expect(tensor!.dtype).toBe('float32');
        // The staging memory for the codes is freed: one buffer more, the result's.
        expect(tf.backend().numDataIds()).toBe(buffers + 1);
        expect(Array.from(tensor!.dataSync()), `shape [${shape}], block ${blockSize}`).toEqual(dequantizedByDefinition(length, codes));
        tensor!.dispose();
      }
    });
  });

  it('refuses codes, scales or a table too short for the shape, leaving no memory behind', async () => {
    await tf.setBackend('wasm');
    await withoutTensorLeaks(() => {
      const codes = codesFor(64, 32, 3);
      const buffers = tf.backend().numDataIds();
      expect(() => dequantized4bitTensor([130], codes)).toThrow(RangeError);
      expect(() => dequantized4bitTensor([64], { ...codes, absmax: codes.absmax.subarray(0, 1) })).toThrow(/64 values need 32 packed bytes, 2 scales/u);
      expect(() => dequantized4bitTensor([64], { ...codes, code: codes.code.subarray(0, 8) })).toThrow(RangeError);
      expect(() => dequantized4bitTensor([64], { ...codes, blockSize: 0 })).toThrow(RangeError);
      expect(tf.backend().numDataIds()).toBe(buffers);
    });
  });

  it('returns null on the plain-JS backend (the caller dequantizes in JavaScript) and for an empty shape', async () => {
    await tf.setBackend('cpu');
    expect(dequantized4bitTensor([4, 16], codesFor(64, 64, 4))).toBeNull();
    await tf.setBackend('wasm');
    expect(dequantized4bitTensor([0, 16], codesFor(0, 64, 4))).toBeNull();
  });
});
