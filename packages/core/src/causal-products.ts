import * as tf from '@tensorflow/tfjs-core';
import { activeBackendHasKernels } from './registered-kernels.js';

/**
 * tfjs kernel name of causal attention's scores: inputs `a` [..., T, D] and `b` [..., T, D] (the
 * same leading axes), output tril(a·bᵀ) [..., T, T], zero above the diagonal. Registered by core's
 * WASM kernels, which multiply only the tiles on or below the diagonal (about half the product).
 */
export const CAUSAL_SCORES_KERNEL = 'LoraCausalScores';
/**
 * tfjs kernel name of causal attention's mix: inputs `a` [..., T, T] and `b` [..., T, D], attribute
 * `transposeA`, output op(tril(a))·b [..., T, D]: what lies above a's diagonal is never read.
 */
export const CAUSAL_MIX_KERNEL = 'LoraCausalMix';

const mix = (a: tf.Tensor, b: tf.Tensor, transposeA: boolean): tf.Tensor => tf.engine().runKernel(CAUSAL_MIX_KERNEL, { a, b }, { transposeA }) as tf.Tensor;
const scores = (a: tf.Tensor, b: tf.Tensor): tf.Tensor => tf.engine().runKernel(CAUSAL_SCORES_KERNEL, { a, b }, {}) as tf.Tensor;

// The gradients are causal products again: with L = tril(a),
//   C = tril(a·bᵀ):  da = tril(dC)·b,   db = tril(dC)ᵀ·a
//   C = L·b:         da = tril(dC·bᵀ),  db = Lᵀ·dC
//   C = Lᵀ·b:        da = tril(b·dCᵀ),  db = L·dC
function registerCausalGradients(): void {
  if (tf.getGradient(CAUSAL_SCORES_KERNEL) !== undefined) return;
  tf.registerGradient({
    kernelName: CAUSAL_SCORES_KERNEL,
    inputsToSave: ['a', 'b'],
    gradFunc: (dy, saved) => {
      const [a, b] = saved as [tf.Tensor, tf.Tensor];
      const dc = dy as tf.Tensor;
      return { a: () => mix(dc, b, false), b: () => mix(dc, a, true) };
    },
  });
  tf.registerGradient({
    kernelName: CAUSAL_MIX_KERNEL,
    inputsToSave: ['a', 'b'],
    gradFunc: (dy, saved, attrs) => {
      const [a, b] = saved as [tf.Tensor, tf.Tensor];
      const dc = dy as tf.Tensor;
      const transposeA = attrs['transposeA'] === true;
      return transposeA ? { a: () => scores(b, dc), b: () => mix(a, dc, false) } : { a: () => scores(dc, b), b: () => mix(a, dc, true) };
    },
  });
}

/** Whether `a` and `b` are float32 stacks of matrices with the same leading axes and `a`'s rows as many as `b`'s. */
function stacked(a: tf.Tensor, b: tf.Tensor): boolean {
  return (
    a.dtype === 'float32' &&
    b.dtype === 'float32' &&
    a.rank >= 2 &&
    a.rank === b.rank &&
    a.shape.slice(0, -1).every((dimension, axis) => dimension === b.shape[axis]) &&
    activeBackendHasKernels(CAUSAL_SCORES_KERNEL, CAUSAL_MIX_KERNEL)
  );
}

/**
 * Causal attention's scores tril(q·kᵀ) for q, k [..., T, D]: [..., T, T], zero above the diagonal
 * (a key after the query), differentiable. On a backend with core's causal products (the WASM
 * backend after `initRuntime()`), about half of the product's work; null elsewhere (the caller
 * multiplies in full and masks, as before).
 */
export function causalScores(q: tf.Tensor, k: tf.Tensor): tf.Tensor | null {
  if (!stacked(q, k) || q.shape[q.rank - 1] !== k.shape[k.rank - 1]) return null;
  registerCausalGradients();
  return scores(q, k);
}

/**
 * Causal attention's output tril(p)·v for probabilities p [..., T, T] (what lies above the diagonal
 * is taken as zero and never read) and values v [..., T, D]: [..., T, D], differentiable. About half
 * of the product's work; null where core's causal products do not run (see {@link causalScores}).
 */
export function causalMix(p: tf.Tensor, v: tf.Tensor): tf.Tensor | null {
  if (!stacked(p, v) || p.shape[p.rank - 1] !== p.shape[p.rank - 2]) return null;
  registerCausalGradients();
  return mix(p, v, false);
}
