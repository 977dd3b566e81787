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
/**
 * tfjs kernel name of a LoRA layer's whole forward pass, base layer included: inputs `x` [rows, in],
 * `w` (the base weight: [in, out] with attribute `inOut` true, else [out, in]), `a`, `b` and, when
 * the base layer has one, `bias` [out]; attributes `scaling`, `inOut` and `inputGradient`; outputs
 * y = x·op(W) + bias + hs·Bᵀ and hs = s·(x·Aᵀ). Differentiable through {@link LORA_LINEAR_BACKWARD_KERNEL}.
 */
export const LORA_LINEAR_FORWARD_KERNEL = 'LoraLinearForward';
/**
 * tfjs kernel name of the same pass for a layer with dropout on the adapter's input: inputs as
 * {@link LORA_LINEAR_FORWARD_KERNEL}'s and `xa`, x after dropout; hs = s·(xa·Aᵀ). Its own name because
 * its gradient saves one input more.
 */
export const LORA_LINEAR_DROPOUT_FORWARD_KERNEL = 'LoraLinearDropoutForward';
/**
 * tfjs kernel name of their gradient: inputs `dy`, `x`, `w`, `a`, `b`, `hs` and, for the dropout
 * form, `xa`; attributes as the forward pass's; outputs dx = dy·op(W)ᵀ + s·(dy·B)·A, dA, dB, or with
 * `xa` dx = dy·op(W)ᵀ, dxa = s·(dy·B)·A, dA, dB (dA, dB alone when `inputGradient` is false).
 */
export const LORA_LINEAR_BACKWARD_KERNEL = 'LoraLinearBackward';

function registerLowRankGradients(): void {
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
  for (const kernelName of [LORA_LINEAR_FORWARD_KERNEL, LORA_LINEAR_DROPOUT_FORWARD_KERNEL]) {
    const dropout = kernelName === LORA_LINEAR_DROPOUT_FORWARD_KERNEL;
    tf.registerGradient({
      kernelName,
      inputsToSave: dropout ? ['x', 'w', 'a', 'b', 'xa'] : ['x', 'w', 'a', 'b'],
      outputsToSave: [false, true],
      gradFunc: (dys, saved, attrs) => {
        const [dy] = dys as [tf.Tensor2D];
        const [x, w, a, b, ...rest] = saved as tf.Tensor2D[] as [tf.Tensor2D, tf.Tensor2D, tf.Tensor2D, tf.Tensor2D, ...tf.Tensor2D[]];
        const [xa, hs] = dropout ? (rest as [tf.Tensor2D, tf.Tensor2D]) : [null, rest[0]!];
        const scaling = attrs['scaling'] as number;
        const inOut = attrs['inOut'] === true;
        const inputGradient = attrs['inputGradient'] !== false;
        const inputs = { dy, x, w, a, b, hs, ...(xa === null ? {} : { xa }) };
        const gradients = tf.engine().runKernel(LORA_LINEAR_BACKWARD_KERNEL, inputs, { scaling, inOut, inputGradient }) as tf.Tensor[];
        const [dx, dxa, da, db] = !inputGradient ? [null, null, ...gradients] : xa === null ? [gradients[0]!, null, gradients[1]!, gradients[2]!] : gradients;
        // Without `inputGradient` (x depends on no trainable variable), asked for anyway: composed.
        const baseDx = (): tf.Tensor => tf.matMul(dy, w, false, inOut);
        const adapterDx = (): tf.Tensor => tf.matMul(tf.mul(tf.matMul(dy, b), scaling), a);
        return {
          x: () => dx ?? (xa === null ? tf.add(baseDx(), adapterDx()) : baseDx()),
          xa: () => dxa ?? adapterDx(),
          a: () => da!,
          b: () => db!,
          // A trainable base (rare with LoRA) gets its gradients composed: d op(W) = xᵀ·dy.
          w: () => (inOut ? tf.matMul(x, dy, true, false) : tf.matMul(dy, x, true, false)),
          bias: () => tf.sum(dy, 0),
        };
      },
    });
  }
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
  registerLowRankGradients();
  return tf.tidy(() => {
    const inputs = { x: tf.reshape(x, [-1, inFeatures]), a, b, base: tf.reshape(base, [-1, outFeatures]) };
    const attrs = { scaling, inputGradient: dependsOnTrainableVariable(x) };
    const [y] = tf.engine().runKernel(LORA_FORWARD_KERNEL, inputs, attrs) as tf.Tensor[];
    return tf.reshape(y!, base.shape);
  });
}

/** What {@link lowRankLinearTrain} needs of a LoRA layer's base layer (core's `Linear`). */
export interface LowRankLinearBase {
  /** [in, out] when `fanInFanOut`, else [out, in]. */
  readonly weight: tf.Tensor;
  readonly bias: tf.Tensor | null;
  readonly fanInFanOut: boolean;
}

/**
 * A LoRA layer's whole output `x·op(W) + bias + scaling·(xa·Aᵀ)·Bᵀ`, base layer included (x [..., in],
 * A [rank, in], B [out, rank]; `base` the layer's weight and bias; xa the adapter's input: x after
 * dropout, made by `adapterInput` (called once, and only when this form runs, so that a declined
 * call draws no mask), or x itself without it), differentiable in all of them, as
 * one kernel forward and one backward: the rank-r term is computed a block of rows at a time and the
 * base product's sums start from it, so the base output is never written by one kernel to be read
 * by the next. On the same backends as {@link lowRankTrain}, for layers whose packed weight fits the
 * kernel's buffers; null otherwise (the caller computes the base layer and then
 * {@link lowRankTrain}). Equal to the composed form up to float32 summation order.
 */
export function lowRankLinearTrain(x: tf.Tensor, base: LowRankLinearBase, a: tf.Tensor, b: tf.Tensor, scaling: number, adapterInput?: () => tf.Tensor): tf.Tensor | null {
  const [rank, inFeatures] = a.shape as [number, number];
  const outFeatures = b.shape[0]!;
  const operands = [x, base.weight, a, b, ...(base.bias === null ? [] : [base.bias])];
  // Sizes that do not match go the composed way, whose base layer says what is wrong.
  const weightShape = base.fanInFanOut ? [inFeatures, outFeatures] : [outFeatures, inFeatures];
  const fits =
    x.shape[x.rank - 1] === inFeatures &&
    base.weight.shape.length === 2 &&
    base.weight.shape.every((size, axis) => size === weightShape[axis]) &&
    (base.bias === null || (base.bias.rank === 1 && base.bias.shape[0] === outFeatures));
  const kernelName = adapterInput === undefined ? LORA_LINEAR_FORWARD_KERNEL : LORA_LINEAR_DROPOUT_FORWARD_KERNEL;
  const fused =
    fits &&
    operands.every((tensor) => tensor.dtype === 'float32') &&
    activeBackendHasKernels(kernelName, LORA_LINEAR_BACKWARD_KERNEL) &&
    simdLoraPassesFit(tf.backend(), inFeatures, outFeatures, rank, adapterInput === undefined ? 'layer' : 'layer-dropout');
  if (!fused) return null;
  registerLowRankGradients();
  return tf.tidy(() => {
    const inputs: tf.NamedTensorMap = {
      x: tf.reshape(x, [-1, inFeatures]),
      w: base.weight,
      a,
      b,
      ...(base.bias === null ? {} : { bias: base.bias }),
      ...(adapterInput === undefined ? {} : { xa: tf.reshape(adapterInput(), [-1, inFeatures]) }),
    };
    const attrs = { scaling, inOut: base.fanInFanOut, inputGradient: dependsOnTrainableVariable(x) };
    const [y] = tf.engine().runKernel(kernelName, inputs, attrs) as tf.Tensor[];
    return tf.reshape(y!, [...x.shape.slice(0, -1), outFeatures]);
  });
}
