import type * as tf from '@tensorflow/tfjs-core';
import { CAUSAL_MIX_KERNEL, CAUSAL_SCORES_KERNEL } from './causal-products.js';
import { simdBatchMatMul } from './wasm-simd-matmul.js';

/** The ops check the operands before they call these kernels, so a null is a caller's bug. */
function notTaken(kernelName: string, a: tf.TensorInfo, b: tf.TensorInfo): never {
  throw new Error(
    `[@lora/core] ${kernelName}: the backend's kernel cannot take operands [${a.shape.join(',')}] and [${b.shape.join(',')}] (causalScores and causalMix check them first)`
  );
}

const causalScoresKernel: tf.KernelFunc = ({ inputs, backend }) => {
  const { a, b } = inputs as Record<'a' | 'b', tf.TensorInfo>;
  return simdBatchMatMul(backend as tf.KernelBackend, a, b, false, true, a.shape.slice(0, -2), 'lower-output') ?? notTaken(CAUSAL_SCORES_KERNEL, a, b);
};

const causalMixKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { a, b } = inputs as Record<'a' | 'b', tf.TensorInfo>;
  return simdBatchMatMul(backend as tf.KernelBackend, a, b, attrs!['transposeA'] === true, false, a.shape.slice(0, -2), 'lower-a') ?? notTaken(CAUSAL_MIX_KERNEL, a, b);
};

/** Causal attention's triangular products (wasm/batch-matmul.c's TRI_* forms), by name. */
export const WASM_CAUSAL_PRODUCT_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [CAUSAL_SCORES_KERNEL]: causalScoresKernel, [CAUSAL_MIX_KERNEL]: causalMixKernel };
