import * as tf from '@tensorflow/tfjs-core';
import { addMany } from './add-many.js';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of Σ x² over every value of every input (inputs named `0`, `1`, …; float32 scalar), registered by core's WASM kernels. */
export const SUM_OF_SQUARES_KERNEL = 'LoraSumOfSquares';
/** tfjs kernel name of "every value of every input is finite" (inputs named `0`, `1`, …; bool scalar). */
export const ALL_FINITE_KERNEL = 'LoraAllFinite';

const asInputs = (tensors: readonly tf.Tensor[]): tf.NamedTensorMap => Object.fromEntries(tensors.map((tensor, i) => [String(i), tensor]));

const fusedFor = (kernelName: string, tensors: readonly tf.Tensor[]): boolean =>
  tensors.length > 0 && tensors.every((tensor) => tensor.dtype === 'float32') && activeBackendHasKernels(kernelName);

/**
 * Σ x² over all values of `tensors` (the squared global norm of gradients), a float32 scalar the
 * caller disposes. One kernel for all the tensors on a backend with core's fused kernels (the WASM
 * backend after `initRuntime()`), else two per tensor. Not differentiable.
 */
export function sumOfSquares(tensors: readonly tf.Tensor[]): tf.Scalar {
  if (fusedFor(SUM_OF_SQUARES_KERNEL, tensors)) return tf.engine().runKernel(SUM_OF_SQUARES_KERNEL, asInputs(tensors), {}) as tf.Scalar;
  return tf.tidy(() => (tensors.length === 0 ? tf.scalar(0) : addMany(tensors.map((tensor) => tf.sum(tf.square(tensor))))) as tf.Scalar);
}

/**
 * A bool scalar: whether every value of every tensor is finite (no NaN, no ±Infinity), computed on
 * the device (one kernel on a backend with core's fused kernels); the caller disposes it. Read it
 * with `await flag.data()` where the caller can wait (a GPU backend then does not stall), or use
 * {@link allFinite}.
 */
export function allFiniteFlag(tensors: readonly tf.Tensor[]): tf.Scalar {
  if (tensors.length === 0) return tf.scalar(true, 'bool');
  if (fusedFor(ALL_FINITE_KERNEL, tensors)) return tf.engine().runKernel(ALL_FINITE_KERNEL, asInputs(tensors), {}) as tf.Scalar;
  return tf.tidy(() => tf.all(tf.stack(tensors.map((tensor) => tf.all(tf.isFinite(tensor))))) as tf.Scalar);
}

/** Whether every value of every tensor is finite (no NaN, no ±Infinity); {@link allFiniteFlag} read synchronously. */
export function allFinite(tensors: readonly tf.Tensor[]): boolean {
  if (tensors.length === 0) return true;
  return tf.tidy(() => allFiniteFlag(tensors).dataSync()[0] === 1);
}
