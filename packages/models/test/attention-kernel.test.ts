import * as tf from '@tensorflow/tfjs-core';
import { causalLmLoss, initRuntime, restoreWasmKernels, useFastWasmKernels } from '@lora/core';
import { ATTENTION_GRAD_KERNEL, ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_SELF_ATTENTION_GRAD_KERNEL, CAUSAL_SELF_ATTENTION_KERNEL, spyOnKernels, withSeededRandom } from '@lora/core/internal';
import { expectTensorsClose } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { createModel, type BertForSequenceClassification, type Gpt2LMHeadModel, type LlamaForCausalLM } from '../src/index.js';
import { withoutLeaks } from './helpers.js';

// Core's one-kernel causal attention in GPT-2 and Llama training on WASM.
//
// Attention dropout in training (GPT-2 checkpoints ship attn_pdrop 0.1): on WASM core's causal
// attention drops the probabilities inside its one kernel each way. With core's kernels put back to
// tfjs's (restoreWasmKernels), the same model takes the separate path (the products, the softmax
// with its mask, core's dropout in its composite form on [B, H, T, T], the product with v): in one
// seeded scope both draw the same seeds in the same order (the residual and embedding dropout
// around it too), so the masks are the same and so, to float32 rounding of the two paths' sums, are
// the loss and every gradient.
const TOKENS = [
  [3, 17, 8, 25, 1, 9, 30, 12, 4, 22, 6, 15, 27, 2, 11, 19],
  [5, 14, 29, 7, 21, 10, 0, 26, 13, 18, 24, 3, 16, 28, 9, 20],
];

type CausalLm = Gpt2LMHeadModel | LlamaForCausalLM;

/** One seeded training pass: the loss, every parameter's gradient, and the kernels that ran. `mask`: none, ones, or the second sequence right-padded after 9 tokens. */
function trainingPass(model: CausalLm, withMask: boolean | 'right-padded'): { loss: tf.Tensor; grads: tf.Tensor[]; kernels: string[]; probabilityDropouts: number } {
  const ids = tf.tensor2d(TOKENS, undefined, 'int32');
  const mask = withMask === 'right-padded' ? tf.tensor2d(TOKENS.map((row, b) => row.map((_, j) => (b === 1 && j >= 9 ? 0 : 1))), undefined, 'int32') : withMask ? tf.onesLike(ids) : undefined;
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

describe('core’s causal attention kernel in GPT-2 and Llama training (WASM)', () => {
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

  it.each(models)('%s, attention dropout: one kernel each way, the separate path’s loss and gradients', async (_name, make, fused) => {
    await withoutLeaks(() => {
      const model = make();
      model.train();
      const ours = trainingPass(model, false);
      const separate = trainingPass(model, true);
      restoreWasmKernels();
      let stock: ReturnType<typeof trainingPass>;
      try {
        stock = trainingPass(model, false);
      } finally {
        useFastWasmKernels();
      }
      // Two layers: each forward kernel once and each gradient kernel once, no dropout kernel on the
      // probabilities; a mask of ones takes the kernel too (each sequence's length is T).
      for (const pass of [ours, separate]) expect(pass.kernels.filter((name) => fused.includes(name)).sort()).toEqual([fused[0], fused[0], fused[1], fused[1]].sort());
      expect(ours.probabilityDropouts).toBe(0);
      expectTensorsClose(separate.loss, ours.loss, { rtol: 0, atol: 0 });
      // tfjs's own kernels (core's put back): the separate path, core's dropout in its composite form (the same masks).
      expect(stock.kernels.filter((name) => fused.includes(name))).toEqual([]);
      expectTensorsClose(ours.loss, stock.loss, { rtol: 1e-5, atol: 0 });
      ours.grads.forEach((gradient, i) => expectTensorsClose(gradient, stock.grads[i]!, { rtol: 1e-4, atol: 1e-6 }));
      // The dropout was on: in eval mode (no dropout) the loss differs.
      model.eval();
      const evaluation = trainingPass(model, false);
      expect(Math.abs(evaluation.loss.dataSync()[0]! - ours.loss.dataSync()[0]!)).toBeGreaterThan(1e-3);
      tf.dispose([ours.loss, ...ours.grads, separate.loss, ...separate.grads, stock.loss, ...stock.grads, evaluation.loss, ...evaluation.grads]);
      model.dispose();
    });
  });

  // A right-padded batch: the kernel takes each sequence's length (padding keys masked for every
  // query, as the padding mask does), with the dropout on. The separate path (core's kernels put
  // back to tfjs's) reads the same mask as an additive bias: the same loss and gradients.
  it.each(models)('%s, a right-padded batch: one kernel each way, the padding mask’s loss and gradients', async (_name, make, fused) => {
    await withoutLeaks(() => {
      const model = make();
      model.train();
      const ours = trainingPass(model, 'right-padded');
      restoreWasmKernels();
      let separate: ReturnType<typeof trainingPass>;
      try {
        separate = trainingPass(model, 'right-padded');
      } finally {
        useFastWasmKernels();
      }
      expect(ours.kernels.filter((name) => fused.includes(name)).sort()).toEqual([fused[0], fused[0], fused[1], fused[1]].sort());
      expect(separate.kernels.filter((name) => fused.includes(name))).toEqual([]);
      expectTensorsClose(ours.loss, separate.loss, { rtol: 1e-5, atol: 0 });
      ours.grads.forEach((gradient, i) => expectTensorsClose(gradient, separate.grads[i]!, { rtol: 1e-4, atol: 1e-6 }));
      // The padding mattered: without the mask the loss differs.
      const unmasked = trainingPass(model, false);
      expect(Math.abs(unmasked.loss.dataSync()[0]! - ours.loss.dataSync()[0]!)).toBeGreaterThan(1e-4);
      tf.dispose([ours.loss, ...ours.grads, separate.loss, ...separate.grads, unmasked.loss, ...unmasked.grads]);
      model.dispose();
    });
  });

  it('leaves a left-padded batch (and one with a hole) to the separate path', async () => {
    await withoutLeaks(() => {
      const model = models[0]![1]();
      model.eval();
      const ids = tf.tensor2d(TOKENS, undefined, 'int32');
      for (const rows of [
        [Array(16).fill(1), [0, 0, 0, ...Array(13).fill(1)]],
        [Array(16).fill(1), [1, 1, 0, ...Array(13).fill(1)]],
      ]) {
        const mask = tf.tensor2d(rows, undefined, 'int32');
        const spy = spyOnKernels();
        tf.tidy(() => {
          model.forward(ids, { attentionMask: mask });
        });
        spy.stop();
        expect(spy.calls.filter((call) => call.kernelName === CAUSAL_SELF_ATTENTION_KERNEL)).toEqual([]);
        mask.dispose();
      }
      ids.dispose();
      model.dispose();
    });
  });

  // BERT's bidirectional attention: core's one kernel each way without a mask or with right
  // padding (attention dropout inside it), against the separate path with core's kernels put back.
  const bert = (): BertForSequenceClassification =>
    createModel(
      { architectures: ['BertForSequenceClassification'], vocab_size: 31, hidden_size: 24, intermediate_size: 40, num_hidden_layers: 2, num_attention_heads: 3, max_position_embeddings: 16, type_vocab_size: 2, num_labels: 3, attention_probs_dropout_prob: 0.3, hidden_dropout_prob: 0.1 },
      { seed: 4 },
    ) as BertForSequenceClassification;
  const bertPass = (model: BertForSequenceClassification, mask: number[][] | null): { loss: tf.Tensor; grads: tf.Tensor[]; kernels: string[] } => {
    const ids = tf.tensor2d(TOKENS, undefined, 'int32');
    const attentionMask = mask ? tf.tensor2d(mask, undefined, 'int32') : undefined;
    const labels = tf.tensor1d([2, 0], 'int32');
    const variables = model.namedParameters().map(([, variable]) => variable);
    const spy = spyOnKernels();
    try {
      const { value, grads } = withSeededRandom(42, () =>
        tf.variableGrads(() => tf.losses.softmaxCrossEntropy(tf.oneHot(labels, 3), model.forward(ids, attentionMask ? { attentionMask } : {})) as tf.Scalar, variables),
      );
      return { loss: value, grads: variables.map((variable) => grads[variable.name]!), kernels: spy.calls.map((call) => call.kernelName) };
    } finally {
      spy.stop();
      tf.dispose([ids, labels, ...(attentionMask ? [attentionMask] : [])]);
    }
  };
  const rightPadded = TOKENS.map((row, b) => row.map((_, j) => (b === 1 && j >= 9 ? 0 : 1)));

  it.each([
    ['no mask', null],
    ['a right-padded batch', rightPadded],
  ])('BERT (attention dropout 0.3), %s: one kernel each way, the separate path’s loss and gradients', async (_name, mask) => {
    await withoutLeaks(() => {
      const model = bert();
      model.train();
      const ours = bertPass(model, mask);
      restoreWasmKernels();
      let stock: ReturnType<typeof bertPass>;
      try {
        stock = bertPass(model, mask);
      } finally {
        useFastWasmKernels();
      }
      expect(ours.kernels.filter((name) => name === ATTENTION_KERNEL || name === ATTENTION_GRAD_KERNEL).sort()).toEqual([ATTENTION_KERNEL, ATTENTION_KERNEL, ATTENTION_GRAD_KERNEL, ATTENTION_GRAD_KERNEL]);
      // No softmax, and the heads neither split out nor merged back (the stock path does both by transposes, forward and backward).
      expect(ours.kernels.filter((name) => /Softmax/.test(name))).toEqual([]);
      expect(ours.kernels.filter((name) => name === 'Transpose').length).toBeLessThan(stock.kernels.filter((name) => name === 'Transpose').length - 8);
      expect(stock.kernels.filter((name) => name === ATTENTION_KERNEL)).toEqual([]);
      expectTensorsClose(ours.loss, stock.loss, { rtol: 1e-5, atol: 0 });
      ours.grads.forEach((gradient, i) => expectTensorsClose(gradient, stock.grads[i]!, { rtol: 1e-4, atol: 1e-6 }));
      tf.dispose([ours.loss, ...ours.grads, stock.loss, ...stock.grads]);
      model.dispose();
    });
  });

  it('BERT leaves a left-padded batch to the separate path', async () => {
    await withoutLeaks(() => {
      const model = bert();
      model.eval();
      const pass = bertPass(model, [Array(16).fill(1), [0, 0, 0, ...Array(13).fill(1)]]);
      expect(pass.kernels.filter((name) => name === ATTENTION_KERNEL)).toEqual([]);
      tf.dispose([pass.loss, ...pass.grads]);
      model.dispose();
    });
  });
});
