import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of the fused AdamW update (inputs `param`, `gradient`, `m`, `v`; outputs the new param, m and v), registered by core's WASM kernels. */
export const ADAMW_UPDATE_KERNEL = 'LoraAdamWUpdate';

/** The scalars of one AdamW update (bias corrections folded in by the caller). */
export interface AdamWUpdateScalars {
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  /** learningRate / (1 − β1ᵗ). */
  readonly stepSize: number;
  /** √(1 − β2ᵗ). */
  readonly sqrtCorrection2: number;
  /** 1 − learningRate·weightDecay, or null for no decoupled weight decay. */
  readonly decay: number | null;
}

/**
 * One AdamW update of a float32 parameter: m′ = m·β1 + g·(1 − β1), v′ = v·β2 + g²·(1 − β2),
 * p′ = p·decay − m′ / (√v′ / √c2 + ε)·stepSize. On a backend with core's fused kernels (the WASM
 * backend after `initRuntime()`) one kernel over the tensor instead of 13; the fused kernel runs
 * the same float32 operations in the same order, so both give the same bits. Not differentiable
 * (an optimizer step). The caller disposes the results.
 */
export function adamWUpdate(
  tensors: { param: tf.Tensor; gradient: tf.Tensor; m: tf.Tensor; v: tf.Tensor },
  scalars: AdamWUpdateScalars
): { param: tf.Tensor; m: tf.Tensor; v: tf.Tensor } {
  const { param, gradient, m, v } = tensors;
  const fused = [param, gradient, m, v].every((tensor) => tensor.dtype === 'float32' && tensor.size === param.size) && activeBackendHasKernels(ADAMW_UPDATE_KERNEL);
  if (fused) {
    const attrs = { ...scalars, decay: scalars.decay ?? 1, applyDecay: scalars.decay !== null };
    const [newParam, newM, newV] = tf.engine().runKernel(ADAMW_UPDATE_KERNEL, { param, gradient, m, v }, attrs) as tf.Tensor[];
    return { param: newParam!, m: newM!, v: newV! };
  }
  return tf.tidy(() => {
    const { beta1, beta2, epsilon, stepSize, sqrtCorrection2, decay } = scalars;
    const newM = tf.add(tf.mul(m, beta1), tf.mul(gradient, 1 - beta1));
    const newV = tf.add(tf.mul(v, beta2), tf.mul(tf.square(gradient), 1 - beta2));
    const decayed = decay === null ? param : tf.mul(param, decay);
    const denominator = tf.add(tf.div(tf.sqrt(newV), sqrtCorrection2), epsilon);
    return { param: tf.sub(decayed, tf.mul(tf.div(newM, denominator), stepSize)), m: newM, v: newV };
  });
}
