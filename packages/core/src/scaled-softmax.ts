import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of the fused softmax(scale·x + mask) (inputs `x` and optionally `mask`; attribute `scale`), registered by core's WASM kernels. */
export const SCALED_SOFTMAX_KERNEL = 'LoraScaledSoftmax';
/** Its gradient: inputs `dy` and `y` (the softmax), attribute `scale`; output scale·y·(dy − Σ dy·y). */
export const SCALED_SOFTMAX_GRAD_KERNEL = 'LoraScaledSoftmaxGrad';

function registerScaledSoftmaxGradient(): void {
  if (tf.getGradient(SCALED_SOFTMAX_KERNEL) !== undefined) return;
  tf.registerGradient({
    kernelName: SCALED_SOFTMAX_KERNEL,
    outputsToSave: [true],
    gradFunc: (dy, saved, attrs) => {
      const [y] = saved as [tf.Tensor];
      const upstream = dy as tf.Tensor;
      const scoreGradient = (scale: number): tf.Tensor => tf.engine().runKernel(SCALED_SOFTMAX_GRAD_KERNEL, { dy: upstream, y }, { scale }) as tf.Tensor;
      const [queries, keys] = y.shape.slice(-2) as [number, number];
      return {
        x: () => scoreGradient(attrs['scale'] as number),
        // The mask enters unscaled and broadcast over the leading axes.
        mask: () => tf.sum(tf.reshape(scoreGradient(1), [-1, queries, keys]), 0),
      };
    },
  });
}

/**
 * softmax(scale·scores + mask) over the last axis, differentiable: attention's probabilities.
 * `mask` is an additive bias broadcast to the scores (null for none). On a backend with core's
 * fused kernels (the WASM backend after `initRuntime()`) and a mask of the scores' last two
 * dimensions (a causal mask) or none, one kernel each way; otherwise the composite form.
 */
export function scaledSoftmax(scores: tf.Tensor, scale: number, mask: tf.Tensor | null): tf.Tensor {
  const [queries, keys] = scores.shape.slice(-2) as [number, number];
  const maskFits = mask === null || (mask.rank === 2 && mask.shape[0] === queries && mask.shape[1] === keys && mask.dtype === 'float32');
  const fused = scores.dtype === 'float32' && scores.rank >= 2 && maskFits && activeBackendHasKernels(SCALED_SOFTMAX_KERNEL, SCALED_SOFTMAX_GRAD_KERNEL);
  if (!fused) {
    return tf.tidy(() => {
      const scaled = scale === 1 ? scores : tf.mul(scores, scale);
      return tf.softmax(mask === null ? scaled : tf.add(scaled, mask));
    });
  }
  registerScaledSoftmaxGradient();
  return tf.engine().runKernel(SCALED_SOFTMAX_KERNEL, mask === null ? { x: scores } : { x: scores, mask }, { scale }) as tf.Tensor;
}
