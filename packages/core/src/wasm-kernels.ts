import * as tf from '@tensorflow/tfjs-core';
import { KernelReplacements } from './kernel-replacements.js';
import { WASM_COPY_KERNELS, withStockFallback } from './wasm-copy-kernels.js';
import { fusedKernels } from './wasm-fused-kernels.js';
import { leadingAxesSum } from './wasm-sum.js';
import { WASM_ACTIVATION_KERNELS } from './wasm-activations.js';
import { WASM_LAYER_NORM_KERNELS } from './wasm-layer-norm.js';
import { WASM_SOFTMAX_KERNELS } from './wasm-softmax.js';
import { WASM_ADAMW_KERNELS } from './wasm-adamw.js';
import { WASM_SENSITIVITY_KERNELS } from './wasm-sensitivity.js';
import { WASM_CROSS_ENTROPY_KERNELS } from './wasm-cross-entropy.js';
import { WASM_DROPOUT_KERNELS } from './wasm-dropout.js';
import { WASM_REDUCTION_KERNELS } from './wasm-reductions.js';
import { WASM_LOW_RANK_KERNELS } from './wasm-low-rank.js';
import { WASM_ROTARY_KERNELS } from './wasm-rotary.js';
import { WASM_LOW_RANK_TRAIN_KERNELS } from './wasm-low-rank-train.js';
import { WASM_CAUSAL_PRODUCT_KERNELS } from './wasm-causal-products.js';
import { WASM_CAUSAL_ATTENTION_KERNELS } from './wasm-causal-attention.js';
import { fastWasmMatMulKernels, restoreWasmMatMul, useFastWasmMatMul } from './wasm-matmul.js';
import { hasSimdBatchMatMul } from './wasm-simd-matmul.js';

/** Stock kernels replaced by {@link useFastWasmKernels} (the matMul ones are kept by wasm-matmul). */
const replacements = new KernelReplacements();

/** Kernels of core's own (fused forms of composite ops), new names in tfjs's registry. */
const OWN_KERNELS: Readonly<Record<string, tf.KernelFunc>> = {
  ...WASM_LAYER_NORM_KERNELS,
  ...WASM_SOFTMAX_KERNELS,
  ...WASM_ADAMW_KERNELS,
  ...WASM_SENSITIVITY_KERNELS,
  ...WASM_CROSS_ENTROPY_KERNELS,
  ...WASM_DROPOUT_KERNELS,
  ...WASM_REDUCTION_KERNELS,
  ...WASM_LOW_RANK_KERNELS,
  ...WASM_ROTARY_KERNELS,
};

/** Kernels of core's own in the batched matMul's module: a LoRA layer's fused passes in training, causal attention's triangular products, causal attention in one kernel each way, the fused activations (gelu_new, the exact gelu, SiLU; shared with the helper thread). */
const OWN_MATMUL_MODULE_KERNELS: Readonly<Record<string, tf.KernelFunc>> = { ...WASM_LOW_RANK_TRAIN_KERNELS, ...WASM_CAUSAL_PRODUCT_KERNELS, ...WASM_CAUSAL_ATTENTION_KERNELS, ...WASM_ACTIVATION_KERNELS };

/**
 * Register {@link OWN_KERNELS} for `backendName` where core's fused-kernels module runs on it, and
 * {@link OWN_MATMUL_MODULE_KERNELS} where the batched matMul's does (ops fall back to their
 * composite forms elsewhere).
 */
function registerOwnKernels(backendName: string): string[] {
  const backend = tf.engine().registry[backendName];
  if (backend === undefined) return [];
  const runnable = { ...(fusedKernels.exports(backend) !== null ? OWN_KERNELS : {}), ...(hasSimdBatchMatMul(backend) ? OWN_MATMUL_MODULE_KERNELS : {}) };
  return Object.entries(runnable)
    .filter(([kernelName]) => tf.getKernel(kernelName, backendName) === undefined)
    .map(([kernelName, kernelFunc]) => {
      tf.registerKernel({ kernelName, backendName, kernelFunc });
      return kernelName;
    });
}

/** The {@link OWN_KERNELS} registered for `backendName`. */
const ownKernels = (backendName: string): string[] => Object.keys({ ...OWN_KERNELS, ...OWN_MATMUL_MODULE_KERNELS }).filter((kernelName) => tf.getKernel(kernelName, backendName) !== undefined);

/**
 * Route a WASM backend's kernels through core's faster forms, through tfjs's kernel registry:
 * the matMul fast paths ({@link useFastWasmMatMul}: XNNPACK for transposed and batched products,
 * frozen weights transposed once); the data-movement kernels that share or block-copy instead of
 * copying value by value (`Identity`, same-dtype `Cast`, `Transpose` keeping the last axis or
 * swapping the last two, `GatherV2`, `SplitV`, `Concat`) and `Sum` over every axis but the last
 * (a bias's gradient); and registers fused kernels of its own for composite ops (GPT-2's gelu_new,
 * BERT's exact gelu, Llama's SiLU, LayerNorm and RMSNorm, the rotary embedding, attention's scaled and masked softmax and cross-entropy, with their gradients; the
 * AdamW update; dropout (its mask hashed from seed and index, the same bits as its composite form); the trainer's gradient norm and finiteness check; a LoRA layer's output at inference, one token
 * at a time; a LoRA layer's forward and backward passes in training, one kernel each; causal attention's products, the masked triangle skipped, and causal attention whole, one kernel each way) where its SIMD modules run.
 * Results are the stock kernels' (products, sums and LayerNorm up to float32 summation order; the
 * fused activations within 2e-6 relative). `initRuntime()` does this for `wasm`; `@lora/cuda-backend`
 * for the instances it starts. Idempotent; only backends running tfjs's WASM kernels should be passed.
 *
 * @param backendName tfjs backend name (default `wasm`).
 * @returns The kernel names replaced by this call (empty when already done or not registered).
 * @example
 * useFastWasmKernels(); // initRuntime() does this for the wasm backend
 */
export function useFastWasmKernels(backendName = 'wasm'): string[] {
  const copyKernels = Object.fromEntries(
    Object.entries({ ...WASM_COPY_KERNELS, Sum: leadingAxesSum }).map(([kernelName, kernel]) => [kernelName, (stock: tf.KernelConfig) => withStockFallback(kernel, stock.kernelFunc)])
  );
  return [...useFastWasmMatMul(backendName), ...replacements.replace(backendName, copyKernels), ...registerOwnKernels(backendName)];
}

/**
 * Put back tfjs's own kernels of `backendName` (undoes {@link useFastWasmKernels}).
 * @returns The kernel names restored.
 */
export function restoreWasmKernels(backendName = 'wasm'): string[] {
  const own = ownKernels(backendName);
  for (const kernelName of own) tf.unregisterKernel(kernelName, backendName);
  return [...restoreWasmMatMul(backendName), ...replacements.restore(backendName), ...own];
}

/** The kernels of `backendName` currently replaced by core's (see {@link useFastWasmKernels}). */
export function fastWasmKernels(backendName = 'wasm'): string[] {
  return [...fastWasmMatMulKernels(backendName), ...replacements.names(backendName), ...ownKernels(backendName)];
}
