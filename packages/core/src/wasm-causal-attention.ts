import type * as tf from '@tensorflow/tfjs-core';
import { ATTENTION_GRAD_KERNEL, ATTENTION_KERNEL } from './bidirectional-attention.js';
import { attentionDropoutOf, attentionKeyLengthsOf, CAUSAL_ATTENTION_GRAD_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_SELF_ATTENTION_GRAD_KERNEL, CAUSAL_SELF_ATTENTION_KERNEL } from './causal-attention.js';
import { simdCausalAttentionBackward, simdCausalAttentionForward, simdCausalSelfAttentionBackward, simdCausalSelfAttentionForward } from './wasm-simd-matmul.js';

/** The ops check the operands and simdCausalAttentionFits before they call these kernels, so a null is a caller's bug. */
function notFitting(kernelName: string, q: tf.TensorInfo): never {
  throw new Error(`[@lora/core] ${kernelName}: the backend's kernel cannot take operands [${q.shape.join(',')}] (causalAttention and causalSelfAttention check them first)`);
}

/** The `heads` attribute: 0 (or absent) for [..., T, D] stacks, else the heads of the layers' layout [B, T, heads·D]. */
function headsOf(attrs: tf.NamedAttrMap | undefined): number | undefined {
  const heads = attrs?.['heads'] as number | undefined;
  return heads === undefined || heads === 0 ? undefined : heads;
}

const causalAttentionKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { q, k, v } = inputs as Record<'q' | 'k' | 'v', tf.TensorInfo>;
  return simdCausalAttentionForward(backend as tf.KernelBackend, q, k, v, attrs!['scale'] as number, headsOf(attrs), attentionDropoutOf(attrs), attentionKeyLengthsOf(attrs)) ?? notFitting(CAUSAL_ATTENTION_KERNEL, q);
};

const causalAttentionGradKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { dy, q, k, v, stats } = inputs as Record<'dy' | 'q' | 'k' | 'v' | 'stats', tf.TensorInfo>;
  return (
    simdCausalAttentionBackward(backend as tf.KernelBackend, dy, q, k, v, stats, attrs!['scale'] as number, headsOf(attrs), attentionDropoutOf(attrs), attentionKeyLengthsOf(attrs)) ??
    notFitting(CAUSAL_ATTENTION_GRAD_KERNEL, q)
  );
};

const causalSelfAttentionKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { qkv } = inputs as Record<'qkv', tf.TensorInfo>;
  return (
    simdCausalSelfAttentionForward(backend as tf.KernelBackend, qkv, attrs!['heads'] as number, attrs!['scale'] as number, attentionDropoutOf(attrs), attentionKeyLengthsOf(attrs)) ??
    notFitting(CAUSAL_SELF_ATTENTION_KERNEL, qkv)
  );
};

const causalSelfAttentionGradKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { dy, qkv, stats } = inputs as Record<'dy' | 'qkv' | 'stats', tf.TensorInfo>;
  return (
    simdCausalSelfAttentionBackward(backend as tf.KernelBackend, dy, qkv, stats, attrs!['heads'] as number, attrs!['scale'] as number, attentionDropoutOf(attrs), attentionKeyLengthsOf(attrs)) ??
    notFitting(CAUSAL_SELF_ATTENTION_GRAD_KERNEL, qkv)
  );
};

const attentionKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { q, k, v } = inputs as Record<'q' | 'k' | 'v', tf.TensorInfo>;
  return (
    simdCausalAttentionForward(backend as tf.KernelBackend, q, k, v, attrs!['scale'] as number, headsOf(attrs), attentionDropoutOf(attrs), attentionKeyLengthsOf(attrs), false) ??
    notFitting(ATTENTION_KERNEL, q)
  );
};

const attentionGradKernel: tf.KernelFunc = ({ inputs, backend, attrs }) => {
  const { dy, q, k, v, stats } = inputs as Record<'dy' | 'q' | 'k' | 'v' | 'stats', tf.TensorInfo>;
  return (
    simdCausalAttentionBackward(backend as tf.KernelBackend, dy, q, k, v, stats, attrs!['scale'] as number, headsOf(attrs), attentionDropoutOf(attrs), attentionKeyLengthsOf(attrs), false) ??
    notFitting(ATTENTION_GRAD_KERNEL, q)
  );
};

/**
 * Self-attention in one kernel each way (wasm/causal-attention.h, in the batched matMul's module):
 * causal on split heads, on the layers' layout and on GPT-2's fused projection; bidirectional (an
 * encoder's) on the layers' layout. By name.
 */
export const WASM_CAUSAL_ATTENTION_KERNELS: Readonly<Record<string, tf.KernelFunc>> = {
  [ATTENTION_KERNEL]: attentionKernel,
  [ATTENTION_GRAD_KERNEL]: attentionGradKernel,
  [CAUSAL_ATTENTION_KERNEL]: causalAttentionKernel,
  [CAUSAL_ATTENTION_GRAD_KERNEL]: causalAttentionGradKernel,
  [CAUSAL_SELF_ATTENTION_KERNEL]: causalSelfAttentionKernel,
  [CAUSAL_SELF_ATTENTION_GRAD_KERNEL]: causalSelfAttentionGradKernel,
};
