import type * as tf from '@tensorflow/tfjs-core';
import { SCALED_SOFTMAX_GRAD_KERNEL, SCALED_SOFTMAX_KERNEL } from './scaled-softmax.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import { heapOffset as offset, leadingRows as rowsOf, type WasmHeapBackend } from './wasm-module.js';

/**
 * The fused attention-softmax kernels of tfjs's WASM backend (wasm/softmax.c: one SIMD pass per
 * row each way). Registered by `useFastWasmKernels` only where the module runs.
 */


const valueKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as WasmHeapBackend;
  const { x, mask } = inputs as { x: tf.TensorInfo; mask?: tf.TensorInfo };
  const out = wasm.makeOutput([...x.shape], 'float32');
  const n = x.shape[x.shape.length - 1]!;
  fusedKernels
    .exports(wasm)!
    .scaledSoftmax(
      rowsOf(x),
      n,
      offset(wasm, x),
      attrs!['scale'] as number,
      mask === undefined ? 0 : offset(wasm, mask),
      mask === undefined ? 1 : mask.shape[0]!,
      offset(wasm, out)
    );
  return out;
};

const gradientKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as WasmHeapBackend;
  const { dy, y } = inputs as { dy: tf.TensorInfo; y: tf.TensorInfo };
  const out = wasm.makeOutput([...y.shape], 'float32');
  fusedKernels.exports(wasm)!.scaledSoftmaxGrad(rowsOf(y), y.shape[y.shape.length - 1]!, offset(wasm, dy), offset(wasm, y), attrs!['scale'] as number, offset(wasm, out));
  return out;
};

/** The kernels by name. */
export const WASM_SOFTMAX_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { [SCALED_SOFTMAX_KERNEL]: valueKernel, [SCALED_SOFTMAX_GRAD_KERNEL]: gradientKernel };
