import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, causalLmLoss, createLoraRegistry, initRuntime, lora, train } from '@lora/core';
import { CAUSAL_SELF_ATTENTION_GRAD_KERNEL, CAUSAL_SELF_ATTENTION_KERNEL, CAUSAL_MIX_KERNEL, CAUSAL_SCORES_KERNEL, LORA_LINEAR_BACKWARD_KERNEL, LORA_LINEAR_FORWARD_KERNEL, matMulFlops, spyOnKernels, type KernelCall, type KernelSpy } from '@lora/core/internal';
import { afterAll, describe, expect, it } from 'vitest';
import { generate, Gpt2LMHeadModel, parseGpt2Config } from '../src/index.js';
import { withoutLeaks } from './helpers.js';

const LAYERS = 2;
const TINY_GPT2 = { vocab_size: 37, n_positions: 16, n_embd: 32, n_layer: LAYERS, n_head: 2, attn_pdrop: 0, embd_pdrop: 0, resid_pdrop: 0 };
const TINY_LORA = { r: 4, loraAlpha: 8, targetModules: ['attn.c_attn', 'attn.c_proj'], fanInFanOut: true };

/** The kernel calls of the second of two LoRA training steps (core's train(), AdamW) on a tiny GPT-2, on `batch` sequences of `length` tokens. */
async function recordLoraStep(batch = 2, length = 12): Promise<{ calls: KernelCall[]; frozen: Set<tf.DataId> }> {
  const model = new Gpt2LMHeadModel(parseGpt2Config({ ...TINY_GPT2, n_positions: Math.max(TINY_GPT2.n_positions, length) }), { seed: 1 });
  AdapterModel.create(model, { registry: createLoraRegistry({ plugins: [lora({ seed: 2 })] }), config: TINY_LORA });
  const inputIds = tf.tensor2d(Array.from({ length: batch * length }, (_, i) => (i * 7) % 37), [batch, length], 'int32');
  // Set from the progress callback, so kept in an object TypeScript does not narrow.
  const recording: { spy: KernelSpy | null } = { spy: null };
  let calls: KernelCall[] = [];
  let frozen = new Set<tf.DataId>();
  try {
    await train({
      model,
      trainData: [{ inputIds }],
      steps: 2,
      learningRate: 1e-2,
      lossFn: (batch: { inputIds: tf.Tensor }) => causalLmLoss(model.forward(batch.inputIds), batch.inputIds),
      onProgress: (progress) => {
        if (progress.kind !== 'step') return;
        if (progress.step === 1) {
          // The frozen weights' data, as step 2 sees it (the first step may set up caches).
          frozen = new Set(model.namedParameters().map(([, variable]) => variable).filter((variable) => !variable.trainable).map((variable) => variable.dataId));
          recording.spy = spyOnKernels();
        } else {
          recording.spy?.stop();
          calls = recording.spy?.calls ?? [];
        }
      },
    });
  } finally {
    recording.spy?.stop();
    inputIds.dispose();
    model.dispose();
  }
  return { calls, frozen };
}

afterAll(async () => {
  await initRuntime();
});

describe.each(['wasm', 'cpu'])('a LoRA training step on the %s backend', (backend) => {
  it('computes only the products it uses and transposes no frozen weight', async () => {
    await initRuntime({ backend });
    const { calls, frozen } = await withoutLeaks(recordLoraStep);
    expect(frozen.size).toBeGreaterThan(10);

    const products = calls.map((call, index) => ({ call, index })).filter(({ call }) => call.depth === 0 && matMulFlops(call) > 0);
    // Forward: per layer c_attn, its lora_A and lora_B, q·kᵀ, p·v, attn.c_proj with lora_A and
    // lora_B, c_fc, mlp.c_proj (10), plus the tied LM head. Backward: the head's input gradient
    // only (its weight is frozen); per layer every input gradient and the LoRA weights' gradients
    // but no frozen weight's (16); the first layer's input needs no gradient (−2: c_attn, lora_A).
    // On wasm each LoRA layer, its base layer included, is one fused kernel each way (core's
    // LoraLinearForward/Backward, counted as products), and so is attention (core's
    // LoraCausalSelfAttention and its gradient, in place of q·kᵀ, p·v and their four gradients'
    // products): 5 per layer forward (c_attn, attention, attn.c_proj, c_fc, mlp.c_proj), 5 backward;
    // in the first layer c_attn's backward kernel leaves out the input's gradient.
    expect(products).toHaveLength(backend === 'wasm' ? 5 * LAYERS + 1 + 1 + 5 * LAYERS : 10 * LAYERS + 1 + 1 + 16 * LAYERS - 2);
    if (backend === 'wasm') {
      const lowRank = products.filter(({ call }) => /^Lora(LowRank|Linear)/.test(call.kernelName));
      expect(lowRank.map(({ call }) => call.kernelName).sort()).toEqual([...Array(2 * LAYERS).fill(LORA_LINEAR_BACKWARD_KERNEL), ...Array(2 * LAYERS).fill(LORA_LINEAR_FORWARD_KERNEL)]);
      // Only the first adapted layer's backward kernel skips dx: [dA, dB] instead of [dx, dA, dB].
      const withoutDx = lowRank.filter(({ call }) => call.kernelName === LORA_LINEAR_BACKWARD_KERNEL && call.outputShapes.length === 2);
      expect(withoutDx).toHaveLength(1);
      // Attention is one kernel each way per layer, reading q, k, v where c_attn wrote them and
      // writing the heads merged (its products the causal triangle's, its probabilities never
      // stored): no separate causal product, no scores' softmax, no split of qkv into heads (nor
      // the concatenation of their gradients).
      const attention = products.filter(({ call }) => call.kernelName === CAUSAL_SELF_ATTENTION_KERNEL || call.kernelName === CAUSAL_SELF_ATTENTION_GRAD_KERNEL);
      expect(attention.map(({ call }) => call.kernelName).sort()).toEqual([...Array(LAYERS).fill(CAUSAL_SELF_ATTENTION_KERNEL), ...Array(LAYERS).fill(CAUSAL_SELF_ATTENTION_GRAD_KERNEL)]);
      expect(products.filter(({ call }) => call.kernelName === CAUSAL_SCORES_KERNEL || call.kernelName === CAUSAL_MIX_KERNEL)).toEqual([]);
      expect(calls.filter((call) => /Softmax|SplitV/.test(call.kernelName)).map((call) => call.kernelName)).toEqual([]);
      // (The loss's shifted labels are one Concat of [2, 11] and [2, 1] ids.)
      expect(calls.filter((call) => call.kernelName === 'Concat' && Object.values(call.inputShapes).some((shape) => shape.length === 3))).toEqual([]);
      expect(products.filter(({ call }) => call.kernelName === 'BatchMatMul' && call.inputShapes['a']!.length === 4)).toEqual([]);
    }

    // Every product's result is read by a later kernel of the step.
    for (const { call, index } of products) {
      const output = call.outputDataIds[0];
      const used = calls.slice(index + 1).some((later) => Object.values(later.inputDataIds).includes(output!));
      expect(used, `${call.kernelName} ${JSON.stringify(call.inputShapes)} is never used`).toBe(true);
    }

    // No frozen weight is transposed (directly, or inside the matMul kernels) during the step.
    const frozenTransposes = calls.filter((call) => call.kernelName === 'Transpose' && frozen.has(call.inputDataIds['x']!));
    expect(frozenTransposes).toEqual([]);
    // The step does use frozen weights in transposed form, so the check bites: the head's h·Eᵀ, and
    // dy·Wᵀ of the four Conv1D layers per layer but the first layer's c_attn (on wasm, of the two
    // not adapted: the fused kernels take the adapted layers' dy·Wᵀ).
    const transposedFrozenUses = products.filter(
      ({ call }) => (call.attrs['transposeB'] === true && frozen.has(call.inputDataIds['b']!)) || (call.attrs['transposeA'] === true && frozen.has(call.inputDataIds['a']!)),
    );
    expect(transposedFrozenUses).toHaveLength(backend === 'wasm' ? 1 + 2 * LAYERS : 1 + 4 * LAYERS - 1);
  });
});

describe('a LoRA training step on long sequences on the wasm backend', () => {
  it('runs attention as one kernel each way past the helper thread’s first buffer (T 520), keeping no [B, H, T, T] tensor', async () => {
    await initRuntime({ backend: 'wasm' });
    const { calls } = await withoutLeaks(() => recordLoraStep(1, 520));
    const names = calls.map((call) => call.kernelName);
    expect(names.filter((name) => name === CAUSAL_SELF_ATTENTION_KERNEL || name === CAUSAL_SELF_ATTENTION_GRAD_KERNEL).sort()).toEqual([
      ...Array(LAYERS).fill(CAUSAL_SELF_ATTENTION_KERNEL),
      ...Array(LAYERS).fill(CAUSAL_SELF_ATTENTION_GRAD_KERNEL),
    ]);
    expect(names.filter((name) => name === CAUSAL_SCORES_KERNEL || name === CAUSAL_MIX_KERNEL || /Softmax/.test(name))).toEqual([]);
    // No [B, H, T, T] scores or probabilities (the model's cached [T, T] causal mask is passed along, unused by the kernel).
    expect(calls.filter((call) => call.outputShapes.some((shape) => shape.length >= 3 && shape.at(-1) === 520 && shape.at(-2) === 520)).map((call) => call.kernelName)).toEqual([]);
  });
});

/** The kernels (names, in order) of a greedy generation of 4 tokens: the base model frozen as an adapter's base is, with a LoRA adapter unmerged, and merged. */
function recordDecoding(): Record<'base' | 'unmerged' | 'merged', string[]> {
  const kernelsOf = (adapter: 'none' | 'unmerged' | 'merged'): string[] => {
    const model = new Gpt2LMHeadModel(parseGpt2Config(TINY_GPT2), { seed: 1 });
    try {
      model.setTrainable(false);
      if (adapter !== 'none') {
        const adapterModel = AdapterModel.create(model, { registry: createLoraRegistry({ plugins: [lora({ seed: 2 })] }), config: TINY_LORA });
        if (adapter === 'merged') adapterModel.merge();
      }
      model.eval();
      const prompt = [[3, 14, 15, 9]];
      generate(model, prompt, { maxNewTokens: 4, eosTokenId: [] });
      const spy = spyOnKernels();
      try {
        generate(model, prompt, { maxNewTokens: 4, eosTokenId: [] });
      } finally {
        spy.stop();
      }
      return spy.calls.filter((call) => call.depth === 0).map((call) => call.kernelName);
    } finally {
      model.dispose();
    }
  };
  return { base: kernelsOf('none'), unmerged: kernelsOf('unmerged'), merged: kernelsOf('merged') };
}

describe.each(['wasm', 'cpu'])('decoding on the %s backend', (backend) => {
  it('runs exactly the base model’s kernels with a merged LoRA adapter, and with an unmerged one on wasm one fused kernel more per adapted layer and token', async () => {
    await initRuntime({ backend });
    const { base, unmerged, merged } = await withoutLeaks(recordDecoding);
    expect(base.length).toBeGreaterThan(100);
    // Merged is the base model's computation: the same kernels in the same order, so the same speed.
    expect(merged).toEqual(base);
    expect(unmerged.length).toBeGreaterThan(base.length);
    if (backend === 'wasm') {
      // Each of the 2 adapted layers per block adds base + s·(x·Aᵀ)·Bᵀ as one kernel, at each of the
      // 4 forward passes (the prompt, then 3 more tokens).
      expect(unmerged.filter((name) => name === 'LoraLowRankAdd')).toHaveLength(2 * LAYERS * 4);
      expect(unmerged.filter((name) => name !== 'LoraLowRankAdd')).toEqual(base);
    }
  });
});
