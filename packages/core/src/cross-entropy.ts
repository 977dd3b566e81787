import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of the fused per-row cross-entropy (inputs `logits` [rows, classes] float32 and `labels` [rows] int32; output [rows]), registered by core's WASM kernels. */
export const CROSS_ENTROPY_KERNEL = 'LoraCrossEntropy';
/** Its gradient with respect to the logits: inputs `dy` [rows], `logits`, `labels`; output dy·(softmax − onehot). */
export const CROSS_ENTROPY_GRAD_KERNEL = 'LoraCrossEntropyGrad';

function registerCrossEntropyGradient(): void {
  if (tf.getGradient(CROSS_ENTROPY_KERNEL) !== undefined) return;
  tf.registerGradient({
    kernelName: CROSS_ENTROPY_KERNEL,
    inputsToSave: ['logits', 'labels'],
    gradFunc: (dy, saved) => {
      const [logits, labels] = saved as [tf.Tensor, tf.Tensor];
      return {
        logits: () => tf.engine().runKernel(CROSS_ENTROPY_GRAD_KERNEL, { dy: dy as tf.Tensor, logits, labels }, {}) as tf.Tensor,
        // Integer labels: nothing to differentiate.
        labels: () => tf.zerosLike(labels),
      };
    },
  });
}

/**
 * Per-row cross-entropy −log softmax(logits)[label] of logits [rows, classes] against int32 labels
 * [rows], differentiable with respect to the logits, on a backend with core's fused kernels (the
 * WASM backend after `initRuntime()`; one kernel each way). Labels follow the composite form's rules
 * (losses.ts): −100 gives 0 (and no gradient), another negative
 * label means class 0, a label past the last class gives 0. Returns null where the fused kernels
 * are not registered (the caller computes the composite form).
 */
export function fusedRowCrossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D): tf.Tensor1D | null {
  const fused = logits.dtype === 'float32' && labels.dtype === 'int32' && activeBackendHasKernels(CROSS_ENTROPY_KERNEL, CROSS_ENTROPY_GRAD_KERNEL);
  if (!fused) return null;
  registerCrossEntropyGradient();
  return tf.engine().runKernel(CROSS_ENTROPY_KERNEL, { logits, labels }, {}) as tf.Tensor1D;
}
