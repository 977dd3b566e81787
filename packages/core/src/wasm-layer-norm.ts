import type * as tf from '@tensorflow/tfjs-core';
import { LAYER_NORM_GRAD_KERNEL, LAYER_NORM_KERNEL, LAYER_NORM_WEIGHT_GRAD_KERNEL } from './layer-norm.js';
import { RMS_NORM_GRAD_KERNEL, RMS_NORM_KERNEL, RMS_NORM_WEIGHT_GRAD_KERNEL } from './rms-norm.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import { heapOffset as offset, leadingRows as rowsOf, type WasmHeapBackend } from './wasm-module.js';

/**
 * The fused LayerNorm and RMSNorm kernels of tfjs's WASM backend (wasm/layer-norm.c: one SIMD pass
 * per row for the value, the input gradient and the weight gradient). Registered by
 * `useFastWasmKernels` only where the module runs.
 */

const dimensionOf = (x: tf.TensorInfo): number => x.shape[x.shape.length - 1]!;

const valueKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as WasmHeapBackend;
  const { x, weight, bias } = inputs as {
    x: tf.TensorInfo;
    weight: tf.TensorInfo;
    bias: tf.TensorInfo;
  };
  const out = wasm.makeOutput([...x.shape], 'float32');
  fusedKernels.exports(wasm)!.layerNorm(rowsOf(x), dimensionOf(x), offset(wasm, x), offset(wasm, weight), offset(wasm, bias), attrs!['eps'] as number, offset(wasm, out));
  return out;
};

// The two norms' gradient exports take the same arguments.
const inputGradientKernel =
  (name: 'layerNormGrad' | 'rmsNormGrad'): tf.KernelFunc =>
  ({ inputs, backend, attrs }) => {
    const wasm = backend as WasmHeapBackend;
    const { dy, x, weight } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo; weight: tf.TensorInfo };
    const out = wasm.makeOutput([...x.shape], 'float32');
    fusedKernels.exports(wasm)![name](rowsOf(x), dimensionOf(x), offset(wasm, dy), offset(wasm, x), offset(wasm, weight), attrs!['eps'] as number, offset(wasm, out));
    return out;
  };

const weightGradientKernel =
  (name: 'layerNormWeightGrad' | 'rmsNormWeightGrad'): tf.KernelFunc =>
  ({ inputs, backend, attrs }) => {
    const wasm = backend as WasmHeapBackend;
    const { dy, x } = inputs as { dy: tf.TensorInfo; x: tf.TensorInfo };
    const out = wasm.makeOutput([dimensionOf(x)], 'float32');
    fusedKernels.exports(wasm)![name](rowsOf(x), dimensionOf(x), offset(wasm, dy), offset(wasm, x), attrs!['eps'] as number, offset(wasm, out));
    return out;
  };

const rmsValueKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const wasm = backend as WasmHeapBackend;
  const { x, weight } = inputs as { x: tf.TensorInfo; weight: tf.TensorInfo };
  const out = wasm.makeOutput([...x.shape], 'float32');
  fusedKernels.exports(wasm)!.rmsNorm(rowsOf(x), dimensionOf(x), offset(wasm, x), offset(wasm, weight), attrs!['eps'] as number, offset(wasm, out));
  return out;
};

/** The kernels by name. */
export const WASM_LAYER_NORM_KERNELS: Readonly<Record<string, tf.KernelFunc>> = {
  [LAYER_NORM_KERNEL]: valueKernel,
  [LAYER_NORM_GRAD_KERNEL]: inputGradientKernel('layerNormGrad'),
  [LAYER_NORM_WEIGHT_GRAD_KERNEL]: weightGradientKernel('layerNormWeightGrad'),
  [RMS_NORM_KERNEL]: rmsValueKernel,
  [RMS_NORM_GRAD_KERNEL]: inputGradientKernel('rmsNormGrad'),
  [RMS_NORM_WEIGHT_GRAD_KERNEL]: weightGradientKernel('rmsNormWeightGrad'),
};
