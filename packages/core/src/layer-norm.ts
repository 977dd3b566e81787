import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/** tfjs kernel name of the fused LayerNorm (inputs `x`, `weight`, `bias`; attribute `eps`), registered by core's WASM kernels. */
export const LAYER_NORM_KERNEL = 'LoraLayerNorm';
/** The fused LayerNorm's input gradient: inputs `dy`, `x`, `weight`; attribute `eps`. */
export const LAYER_NORM_GRAD_KERNEL = 'LoraLayerNormGrad';
/** The fused LayerNorm's weight gradient Σ dy·x̂ over the rows: inputs `dy`, `x`; attribute `eps`. */
export const LAYER_NORM_WEIGHT_GRAD_KERNEL = 'LoraLayerNormWeightGrad';

/** A fused norm's kernels: its value (inputs `x`, `weight`, and LayerNorm's `bias`), input gradient and weight gradient. */
export interface NormKernels {
  readonly value: string;
  readonly gradient: string;
  readonly weightGradient: string;
}

/**
 * Register a fused norm's gradient (LayerNorm's, or RMSNorm's without a bias), one thunk per input:
 * the tape calls only those of inputs it differentiates (so a frozen weight and bias cost nothing).
 */
export function registerNormGradient(kernels: NormKernels, withBias: boolean): void {
  if (tf.getGradient(kernels.value) !== undefined) return;
  tf.registerGradient({
    kernelName: kernels.value,
    inputsToSave: ['x', 'weight'],
    gradFunc: (dy, saved, attrs) => {
      const [x, weight] = saved as [tf.Tensor, tf.Tensor];
      const upstream = dy as tf.Tensor;
      const eps = { eps: attrs['eps'] as number };
      const thunks: Record<string, () => tf.Tensor> = {
        x: () => tf.engine().runKernel(kernels.gradient, { dy: upstream, x, weight }, eps) as tf.Tensor,
        weight: () => tf.engine().runKernel(kernels.weightGradient, { dy: upstream, x }, eps) as tf.Tensor,
      };
      if (withBias) thunks['bias'] = () => tf.sum(upstream, Array.from({ length: x.rank - 1 }, (_, i) => i));
      return thunks;
    },
  });
}

const LAYER_NORM_KERNELS: NormKernels = { value: LAYER_NORM_KERNEL, gradient: LAYER_NORM_GRAD_KERNEL, weightGradient: LAYER_NORM_WEIGHT_GRAD_KERNEL };

/**
 * LayerNorm over the last axis, (x − μ)·r·w + b with r = 1/√(σ² + eps), differentiable. On a
 * backend with core's fused kernels (the WASM backend after `initRuntime()`) one kernel each for
 * the value and each gradient; elsewhere the composite form.
 */
export function layerNorm(input: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
  const fused = input.dtype === 'float32' && activeBackendHasKernels(LAYER_NORM_KERNEL, LAYER_NORM_GRAD_KERNEL, LAYER_NORM_WEIGHT_GRAD_KERNEL);
  if (!fused) return compositeLayerNorm(input, weight, bias, eps);
  registerNormGradient(LAYER_NORM_KERNELS, true);
  return tf.engine().runKernel(LAYER_NORM_KERNEL, { x: input, weight, bias }, { eps }) as tf.Tensor;
}

/**
 * (x − μ)·r·w + b over the last axis, r = 1/√(σ² + eps), with its gradient written out: for
 * x̂ = (x − μ)·r and g = dy·w, dx = r·(g − mean(g) − x̂·mean(g·x̂)), dw = Σ dy·x̂, db = Σ dy over the
 * leading axes. The tape would otherwise differentiate moments, rsqrt and every broadcast of the
 * forward chain, about twice as many kernels.
 *
 * A custom gradient computes the gradients of all its inputs whether or not they are wanted, and
 * the sums over the leading axes are the expensive part (a reduction across rows, transposed first
 * on WASM). So a frozen weight and bias (non-trainable variables: LoRA training) are constants of
 * the gradient, not inputs of it, and their gradients are not computed; like PyTorch's
 * `requires_grad=False`, the result then has no gradient with respect to them.
 */
function compositeLayerNorm(input: tf.Tensor, weight: tf.Tensor, bias: tf.Tensor, eps: number): tf.Tensor {
  const axis = input.rank - 1;
  const leadingAxes = Array.from({ length: axis }, (_, i) => i);
  const frozen = (parameter: tf.Tensor): boolean => parameter instanceof tf.Variable && !parameter.trainable;
  const normalised = (x: tf.Tensor): { xHat: tf.Tensor; reciprocal: tf.Tensor } => {
    // tf.moments would subtract the mean twice (once for the variance, once here).
    const centred = tf.sub(x, tf.mean(x, axis, true));
    const reciprocal = tf.rsqrt(tf.add(tf.mean(tf.square(centred), axis, true), eps));
    return { xHat: tf.mul(centred, reciprocal), reciprocal };
  };
  const inputGradient = (dy: tf.Tensor, xHat: tf.Tensor, r: tf.Tensor, w: tf.Tensor): tf.Tensor => {
    const g = tf.mul(dy, w);
    const centred = tf.sub(g, tf.mean(g, axis, true));
    return tf.mul(tf.sub(centred, tf.mul(xHat, tf.mean(tf.mul(g, xHat), axis, true))), r);
  };
  if (frozen(weight) && frozen(bias)) {
    const normaliseInput = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const [x, save] = inputs as [tf.Tensor, tf.GradSaveFunc];
      const { xHat, reciprocal } = normalised(x);
      save([xHat, reciprocal]);
      return {
        value: tf.add(tf.mul(xHat, weight), bias),
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => inputGradient(dy, saved[0]!, saved[1]!, weight),
      };
    });
    return normaliseInput(input) as tf.Tensor;
  }
  const normalise = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x, w, b, save] = inputs as [tf.Tensor, tf.Tensor, tf.Tensor, tf.GradSaveFunc];
    const { xHat, reciprocal } = normalised(x);
    save([xHat, reciprocal, w]);
    return {
      value: tf.add(tf.mul(xHat, w), b),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xHat, r, savedWeight] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
        return [inputGradient(dy, xHat, r, savedWeight), tf.sum(tf.mul(dy, xHat), leadingAxes), tf.sum(dy, leadingAxes)];
      },
    };
  });
  return normalise(input, weight, bias) as tf.Tensor;
}
