import * as tf from '@tensorflow/tfjs-core';
import { ShapeError } from './errors.js';
import { activeBackendHasKernels } from './registered-kernels.js';

/**
 * tfjs kernel name of the fused rotary embedding, registered by core's WASM kernels: inputs `x`
 * [n0, n1, n2, D] and the tables `cos`, `sin` [n0, 1 or n1, 1 or n2, D/2]; attribute `inverse`
 * (rotate by −angle: the gradient).
 */
export const ROTARY_KERNEL = 'LoraRotary';

function registerRotaryGradient(): void {
  if (tf.getGradient(ROTARY_KERNEL) !== undefined) return;
  tf.registerGradient({
    kernelName: ROTARY_KERNEL,
    inputsToSave: ['cos', 'sin'],
    // A rotation's gradient is the inverse rotation; the tables are constants (angles of positions).
    gradFunc: (dy, saved, attrs) => {
      const [cos, sin] = saved as [tf.Tensor, tf.Tensor];
      return { x: () => tf.engine().runKernel(ROTARY_KERNEL, { x: dy as tf.Tensor, cos, sin }, { inverse: !(attrs['inverse'] as boolean) }) as tf.Tensor };
    },
  });
}

/** Whether `table` [n0, 1 or n1, 1 or n2, D/2] fits x [n0, n1, n2, D] as the kernel reads it. */
function tableFits(x: tf.Tensor, table: tf.Tensor): boolean {
  const [n0, n1, n2, d] = x.shape as [number, number, number, number];
  const [t0, t1, t2, h] = table.shape as [number, number, number, number];
  return table.rank === 4 && table.dtype === 'float32' && t0 === n0 && (t1 === 1 || t1 === n1) && (t2 === 1 || t2 === n2) && 2 * h === d;
}

/**
 * Rotary position embedding in transformers' `rotate_half` form (Llama's), differentiable in `x`:
 * with x's last axis as halves x₁, x₂ (D = 2h values) and tables `cos`, `sin` of h angles' cosines
 * and sines, `[x₁·cos − x₂·sin, x₂·cos + x₁·sin]`. The tables broadcast against x's leading axes (one
 * row of angles per position, shared by the heads). On a backend with core's fused kernel (the WASM
 * backend after `initRuntime()`), for x [n0, n1, n2, D] and tables [n0, 1 or n1, 1 or n2, D/2], one
 * pass each way instead of 6 kernels; elsewhere the composite form, the same values.
 * @throws {ShapeError} when x's last axis is odd or not twice the tables'.
 */
export function rotaryEmbedding(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  const d = x.shape[x.rank - 1]!;
  if (d % 2 !== 0 || cos.shape[cos.rank - 1]! * 2 !== d || sin.shape[sin.rank - 1]! * 2 !== d) {
    throw new ShapeError('[@lora/core] rotaryEmbedding: the tables must hold half of x’s last axis (an even size)', [...cos.shape.slice(0, -1), d / 2], cos.shape);
  }
  const fused = x.dtype === 'float32' && x.rank === 4 && tableFits(x, cos) && tableFits(x, sin) && activeBackendHasKernels(ROTARY_KERNEL);
  if (!fused) {
    return tf.tidy(() => {
      const [x1, x2] = tf.split(x, 2, -1) as [tf.Tensor, tf.Tensor];
      return tf.concat([tf.sub(tf.mul(x1, cos), tf.mul(x2, sin)), tf.add(tf.mul(x2, cos), tf.mul(x1, sin))], -1);
    });
  }
  registerRotaryGradient();
  return tf.engine().runKernel(ROTARY_KERNEL, { x, cos, sin }, { inverse: false }) as tf.Tensor;
}
