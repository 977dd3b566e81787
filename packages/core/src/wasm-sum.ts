import * as tf from '@tensorflow/tfjs-core';
import type { PartialKernel } from './wasm-copy-kernels.js';
import { fusedKernels } from './wasm-fused-kernels.js';

/**
 * `Sum` over every axis but the last (a bias's gradient: dy summed over the batch and positions) on
 * core's SIMD kernel (wasm/reductions.c `sum_rows`, each row added in place). tfjs-backend-wasm
 * transposes the reduced axes last first, one value at a time: about 3.6 ms for a [1024, 1024]
 * gradient, most of full fine-tuning's reductions. Other reductions go to the stock kernel.
 */
export const leadingAxesSum: PartialKernel = ({ inputs, backend, attrs }) => {
  const x = inputs['x']!;
  const rank = x.shape.length;
  const simd = fusedKernels.exports(backend);
  if (x.dtype !== 'float32' || rank < 2 || simd === null) return null;
  const axes = tf.util.parseAxisParam(attrs['axis'] as number | number[], x.shape);
  const leading = axes.length === rank - 1 && [...axes].sort((a, b) => a - b).every((axis, i) => axis === i);
  if (!leading) return null;
  const cols = x.shape[rank - 1]!;
  const out = backend.makeOutput(attrs['keepDims'] === true ? [...x.shape.slice(0, -1).map(() => 1), cols] : [cols], 'float32');
  const input = backend.typedArrayFromHeap(x);
  simd.sumRows(input.length / Math.max(cols, 1), cols, input.byteOffset, backend.typedArrayFromHeap(out).byteOffset);
  return out;
};
