import * as tf from '@tensorflow/tfjs-core';

/**
 * Whether every named kernel is registered for the active backend: the gate of each fused op, whose
 * kernels core registers only where its WASM module runs (elsewhere the op takes its composite form).
 */
export function activeBackendHasKernels(...kernelNames: readonly string[]): boolean {
  const backend = tf.getBackend();
  return kernelNames.every((kernelName) => tf.getKernel(kernelName, backend) !== undefined);
}
