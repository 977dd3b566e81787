import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';
import { dependsOnTrainableVariable } from './tape-reach.js';
import { simdLoraPassesFit } from './wasm-simd-matmul.js';

/**
 * tfjs kernel name of a LoRA layer's fused forward pass: inputs `x` [rows, in], `a` [rank, in], `b`
 * [out, rank], `base` [rows, out], attributes `scaling` and `inputGradient` (whether the backward pass computes dx); outputs y = base + hs·Bᵀ and hs = s·(x·Aᵀ).
 * Registered by core's WASM kernels; differentiable through {@link LORA_BACKWARD_KERNEL}.
 */
export const LORA_FORWARD_KERNEL = 'LoraLowRankForward';
/** tfjs kernel name of its gradient: inputs `dy`, `x`, `a`, `b`, `hs`, attributes `scaling` and `inputGradient`; outputs dx, dA, dB (dA, dB when `inputGradient` is false). */
export const LORA_BACKWARD_KERNEL = 'LoraLowRankBackward';

function registerLowRankGradient(): void {
  if (tf.getGradient(LORA_FORWARD_KERNEL) !== undefined) return;
  tf.registerGradient({
    kernelName: LORA_FORWARD_KERNEL,
    inputsToSave: ['x', 'a', 'b'],
    outputsToSave: [false, true],
    gradFunc: (dys, saved, attrs) => {
      // hs is an output only so that the backward pass need not recompute it: its gradient is zero.
      const [dy] = dys as [tf.Tensor];
      const [x, a, b, hs] = saved as [tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor];
      const scaling = attrs['scaling'] as number;
      // One kernel gives the gradients, run once, here, and handed out below: tfjs asks for each
      // input's separately, and only for those it needs. Without `inputGradient` (the forward pass
      // found x depends on no trainable variable) it leaves out dx, which, should a caller still ask
      // for it (gradients with respect to x itself), is composed of products.
      const inputGradient = attrs['inputGradient'] !== false;
      const gradients = tf.engine().runKernel(LORA_BACKWARD_KERNEL, { dy, x, a, b, hs }, { scaling, inputGradient }) as tf.Tensor[];
      const [dx, da, db] = inputGradient ? gradients : [null, ...gradients];
      return {
        x: () => dx ?? tf.matMul(tf.mul(tf.matMul(dy, b), scaling), a),
        a: () => da!,
        b: () => db!,
        base: () => tf.clone(dy),
      };
    },
  });
}

/**
 * A LoRA layer's output `base + scaling·(x·Aᵀ)·Bᵀ` over the last axis (x [..., in], A [rank, in],
 * B [out, rank], base [..., out]: the base layer's output), differentiable in all four, as one
 * kernel forward and one backward: on a backend with core's fused LoRA passes (the WASM backend after
 * `initRuntime()`) for float32 operands whose sizes fit its buffers. Returns null otherwise (the
 * caller composes the products). Equal to the composed form up to float32 summation order.
 */
export function lowRankTrain(x: tf.Tensor, a: tf.Tensor, b: tf.Tensor, base: tf.Tensor, scaling: number): tf.Tensor | null {
  const [rank, inFeatures] = a.shape as [number, number];
  const outFeatures = b.shape[0]!;
  const fused =
    [x, a, b, base].every((tensor) => tensor.dtype === 'float32') &&
    activeBackendHasKernels(LORA_FORWARD_KERNEL, LORA_BACKWARD_KERNEL) &&
    simdLoraPassesFit(tf.backend(), inFeatures, outFeatures, rank);
  if (!fused) return null;
  registerLowRankGradient();
  return tf.tidy(() => {
    const inputs = { x: tf.reshape(x, [-1, inFeatures]), a, b, base: tf.reshape(base, [-1, outFeatures]) };
    const attrs = { scaling, inputGradient: dependsOnTrainableVariable(x) };
    const [y] = tf.engine().runKernel(LORA_FORWARD_KERNEL, inputs, attrs) as tf.Tensor[];
    return tf.reshape(y!, base.shape);
  });
}
