import * as tf from '@tensorflow/tfjs-core';

// tfjs's webgpu AddN binds each input as a storage buffer in one shader, and a WebGPU device allows
// 8 storage buffers per shader stage unless asked for more (tfjs 4.22 does not ask): with 8 or more
// inputs the kernel's pipeline is invalid and every GPU command that uses its result fails silently
// (a gradient norm over 8 LoRA factors made a training step's weights garbage). So at most 7 inputs
// (plus the output) go to one AddN, each group's sum carried into the next: the values are still
// added left to right, as one AddN over all of them adds them.
const MAX_ADDN_INPUTS = 7;

/** The elementwise sum of same-shaped tensors, as `tf.addN`, in kernels of at most 7 inputs (any backend, WebGPU included); a new tensor the caller disposes. */
export function addMany<T extends tf.Tensor>(tensors: readonly T[]): T {
  if (tensors.length === 0) throw new RangeError('[@lora/core] addMany needs at least one tensor.');
  return tf.tidy(() => {
    let sum: tf.Tensor = tf.addN(tensors.slice(0, MAX_ADDN_INPUTS) as T[]);
    for (let start = MAX_ADDN_INPUTS; start < tensors.length; start += MAX_ADDN_INPUTS - 1) {
      sum = tf.addN([sum, ...tensors.slice(start, start + MAX_ADDN_INPUTS - 1)]);
    }
    return sum as T;
  });
}
