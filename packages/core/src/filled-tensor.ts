import * as tf from '@tensorflow/tfjs-core';
import { isWasmBackend } from './wasm-module.js';

/**
 * A new float32 tensor of `shape` on the active backend whose values `fill` writes into the array it
 * is handed. On the WASM backend that array is the tensor's own memory in the WASM heap, so no
 * JavaScript array is made: `tf.tensor(values)` from a new array per call (QLoRA dequantizes each
 * 4-bit weight this way in every forward and backward pass) allocated megabytes of external memory a
 * step, to which V8 answered with up to 32 full garbage collections in 26 steps of the bench's QLoRA
 * model (one with the heap path). Elsewhere `fill` gets a new `Float32Array` that the tensor is then
 * made from.
 *
 * `fill` must write every value (the heap memory is not zeroed) and must not run tensor ops: an op
 * may grow the WASM heap, which detaches the array it was handed. If `fill` throws, the tensor is
 * freed and the error passes on.
 */
export function tensorFilledBy(shape: readonly number[], fill: (values: Float32Array) => void): tf.Tensor {
  const size = shape.reduce((product, dimension) => product * dimension, 1);
  const backend = tf.backend();
  if (size === 0 || !isWasmBackend(backend)) {
    const values = new Float32Array(size);
    fill(values);
    return tf.tensor(values, [...shape], 'float32');
  }
  const info = backend.makeOutput([...shape], 'float32');
  try {
    fill(backend.typedArrayFromHeap(info) as Float32Array);
  } catch (error) {
    backend.disposeData(info.dataId);
    throw error;
  }
  return tf.engine().makeTensorFromTensorInfo(info);
}
