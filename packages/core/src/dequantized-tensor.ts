import * as tf from '@tensorflow/tfjs-core';
import { fusedKernels } from './wasm-fused-kernels.js';
import { heapOffset, isWasmBackend } from './wasm-module.js';

/** Blockwise 4-bit codes and what they stand for, in bitsandbytes' layout (QLoRA's frozen weights). */
export interface Packed4bit {
  /** Two codes a byte: value 2k in byte k's high nibble, value 2k + 1 in its low one. */
  readonly packed: Uint8Array;
  /** One scale per block of `blockSize` consecutive values. */
  readonly absmax: Float32Array;
  /** The 16 values the codes index (NF4's or FP4's table). */
  readonly code: Float32Array;
  /** Values per scale. */
  readonly blockSize: number;
}

/**
 * A new float32 tensor of `shape` whose value i is `float32(code[nibble i] · absmax[⌊i / blockSize⌋])`,
 * on the WASM backend dequantized by core's SIMD kernel (wasm/dequantize.c) straight into the
 * tensor's memory: about 3 ns a value in a JavaScript loop, a tenth of that there. Null on other
 * backends, where the caller dequantizes in JavaScript (e.g. into {@link tensorFilledBy}); both give
 * the same float32 products, bit for bit.
 * @throws {RangeError} when the codes, scales or table are shorter than `shape` needs.
 */
export function dequantized4bitTensor(shape: readonly number[], codes: Packed4bit): tf.Tensor | null {
  const size = shape.reduce((product, dimension) => product * dimension, 1);
  const backend = tf.backend();
  if (size === 0 || !isWasmBackend(backend)) return null;
  const kernels = fusedKernels.exports(backend);
  if (kernels === null) return null;
  const { packed, absmax, code, blockSize } = codes;
  const packedBytes = Math.ceil(size / 2);
  const blocks = Math.ceil(size / blockSize);
  if (!Number.isInteger(blockSize) || blockSize < 1 || packed.length < packedBytes || absmax.length < blocks || code.length !== 16) {
    throw new RangeError(
      `[@lora/core] dequantized4bitTensor: ${size} values need ${packedBytes} packed bytes, ${blocks} scales and a 16-entry table with a positive integer block size; got ${packed.length} bytes, ${absmax.length} scales, ${code.length} entries, block size ${blockSize}.`,
    );
  }
  const out = backend.makeOutput([...shape], 'float32');
  // The codes (rounded up to whole floats), the scales and the table, copied next to it in the heap.
  const packedFloats = Math.ceil(packedBytes / 4);
  const scratch = backend.makeOutput([packedFloats + blocks + 16], 'float32');
  try {
    const staging = backend.typedArrayFromHeap(scratch) as Float32Array;
    new Uint8Array(staging.buffer, staging.byteOffset, packedBytes).set(packed.subarray(0, packedBytes));
    staging.set(absmax.subarray(0, blocks), packedFloats);
    staging.set(code, packedFloats + blocks);
    const base = staging.byteOffset;
    kernels.dequantize4bit(size, base, base + packedFloats * 4, blockSize, base + (packedFloats + blocks) * 4, heapOffset(backend, out));
  } catch (error) {
    backend.disposeData(out.dataId);
    throw error;
  } finally {
    backend.disposeData(scratch.dataId);
  }
  return tf.engine().makeTensorFromTensorInfo(out);
}
