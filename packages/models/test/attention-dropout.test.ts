import * as tf from '@tensorflow/tfjs-core';
import { causalLmLoss, initRuntime } from '@lora/core';
import { CAUSAL_ATTENTION_GRAD_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_SELF_ATTENTION_GRAD_KERNEL, CAUSAL_SELF_ATTENTION_KERNEL, spyOnKernels, withSeededRandom } from '@lora/core/internal';
import { expectTensorsClose } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { createModel, type Gpt2LMHeadModel, type LlamaForCausalLM } from '../src/index.js';
import { withoutLeaks } from './helpers.js';

// Attention dropout in training (GPT-2 checkpoints ship attn_pdrop 0.1): on WASM core's causal
// attention drops the probabilities inside its one kernel each way. An attention mask of ones takes
// the separate path (the padding bias: full products, softmax, core's dropout on [B, H, T, T], the
// product with v) on the same model: in one seeded scope both draw the same seeds in the same order
// (the adapters' and residual dropout around it too), so the masks are the same and so, to float32
// rounding of the two paths' sums, are the loss and every gradient.
const TOKENS = [
  [3, 17, 8, 25, 1, 9, 30, 12, 4, 22, 6, 15, 27, 2, 11, 19],
  [5, 14, 29, 7, 21, 10, 0, 26, 13, 18, 24, 3, 16, 28, 9, 20],
];

type CausalLm = Gpt2LMHeadModel | LlamaForCausalLM;

/** One seeded training pass: the loss, every parameter's gradient, and the kernels that ran. */
function trainingPass(model: CausalLm, withMask: boolean): { loss: tf.Tensor; grads: tf.Tensor[]; kernels: string[]; probabilityDropouts: number } {
  const ids = tf.tensor2d(TOKENS, undefined, 'int32');
  const mask = withMask ? tf.onesLike(ids) : undefined;
  const variables = model.namedParameters().map(([, variable]) => variable);
  const spy = spyOnKernels();
  try {
    const { value, grads } = withSeededRandom(42, () =>
      tf.variableGrads(() => causalLmLoss(model.forward(ids, mask ? { attentionMask: mask } : {}), ids), variables),
    );
    // Dropout kernels on [B, H, T, T] probabilities.
    const probabilityDropouts = spy.calls.filter((call) => call.kernelName === 'LoraDropout' && call.outputShapes[0]?.length === 4 && call.outputShapes[0][3] === TOKENS[0]!.length).length;
    return { loss: value, grads: variables.map((variable) => grads[variable.name]!), kernels: spy.calls.map((call) => call.kernelName), probabilityDropouts };
  } finally {
    spy.stop();
    tf.dispose([ids, ...(mask ? [mask] : [])]);
  }
}

describe('attention dropout inside core’s causal attention kernel (WASM)', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  const models: [string, () => CausalLm, string[]][] = [
    [
      'GPT-2 (attn_pdrop 0.3, resid and embd dropout 0.1)',
      () => createModel({ architectures: ['GPT2LMHeadModel'], vocab_size: 31, n_positions: 16, n_embd: 24, n_layer: 2, n_head: 3, attn_pdrop: 0.3, resid_pdrop: 0.1, embd_pdrop: 0.1 }, { seed: 4 }) as Gpt2LMHeadModel,
      [CAUSAL_SELF_ATTENTION_KERNEL, CAUSAL_SELF_ATTENTION_GRAD_KERNEL],
    ],
    [
      'Llama (attention_dropout 0.3, 4 heads, 2 key/value heads)',
      () =>
        createModel(
          { architectures: ['LlamaForCausalLM'], vocab_size: 31, hidden_size: 32, intermediate_size: 40, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, attention_dropout: 0.3 },
          { seed: 4 },
        ) as LlamaForCausalLM,
      [CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL],
    ],
  ];

  it.each(models)('%s: one kernel each way, the separate path’s loss and gradients', async (_name, make, fused) => {
    await withoutLeaks(() => {
      const model = make();
      model.train();
      const ours = trainingPass(model, false);
      const separate = trainingPass(model, true);
      // Two layers: each forward kernel once and each gradient kernel once, no dropout kernel on the probabilities.
      expect(ours.kernels.filter((name) => fused.includes(name)).sort()).toEqual([fused[0], fused[0], fused[1], fused[1]].sort());
      expect(separate.kernels.filter((name) => fused.includes(name))).toEqual([]);
      expect(ours.probabilityDropouts).toBe(0);
      expect(separate.probabilityDropouts).toBeGreaterThanOrEqual(2);
      expectTensorsClose(ours.loss, separate.loss, { rtol: 1e-5, atol: 0 });
      ours.grads.forEach((gradient, i) => expectTensorsClose(gradient, separate.grads[i]!, { rtol: 1e-4, atol: 1e-6 }));
      // The dropout was on: in eval mode (no dropout) the loss differs.
      model.eval();
      const evaluation = trainingPass(model, false);
      expect(Math.abs(evaluation.loss.dataSync()[0]! - ours.loss.dataSync()[0]!)).toBeGreaterThan(1e-3);
      tf.dispose([ours.loss, ...ours.grads, separate.loss, ...separate.grads, evaluation.loss, ...evaluation.grads]);
      model.dispose();
    });
  });
});
