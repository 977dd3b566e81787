import * as tf from '@tensorflow/tfjs-core';
import { causalLmLoss, initRuntime } from '@lora/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadPretrained, type Gpt2LMHeadModel } from '../src/index.js';
import { fixture, flat, ids, readJson, relativeError, withoutLeaks } from './helpers.js';

interface Reference {
  inputs: { input_ids: number[][]; attention_mask: number[][] };
  logits: unknown;
  last_hidden_state: unknown;
}

describe('Gpt2LMHeadModel', () => {
  const reference = readJson<Reference>(fixture('models/gpt2/reference.json'));
  let model: Gpt2LMHeadModel;

  beforeAll(async () => {
    await initRuntime();
    model = (await loadPretrained(fixture('models/gpt2'))) as Gpt2LMHeadModel;
  });

  it('matches transformers logits and hidden states on the tiny GPT-2 fixture', async () => {
    await withoutLeaks(() => {
      const input = ids(reference.inputs.input_ids);
      const mask = ids(reference.inputs.attention_mask);
      const logits = model.forward(input, { attentionMask: mask });
      const hidden = model.transformer.forward(input, { attentionMask: mask });
      const logitsError = relativeError(logits, flat(reference.logits));
      const hiddenError = relativeError(hidden, flat(reference.last_hidden_state));
      console.log(`gpt2 fixture: logits rel err ${logitsError.toExponential(2)}, hidden rel err ${hiddenError.toExponential(2)}`);
      expect(logits.shape).toEqual([2, 7, 257]);
      expect(logitsError).toBeLessThan(1e-4);
      expect(hiddenError).toBeLessThan(1e-4);
      tf.dispose([input, mask, logits, hidden]);
    });
  });

  it('ties lm_head to transformer.wte and names parameters as transformers does', () => {
    const names = model.namedParameters().map(([name]) => name);
    expect(names).toHaveLength(28);
    expect(names).toContain('transformer.h.0.attn.c_attn.weight');
    expect(names).not.toContain('lm_head.weight');
    expect(model.getOwnParameter('weight')).toBeUndefined();
    expect(model.transformer.wte.weight.shape).toEqual([257, 64]);
    expect(model.getSubmodule('transformer.h.0.attn.c_attn')).toBe(model.transformer.h.get(0).attn.c_attn);
  });
});

describe('Gpt2LMHeadModel training', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('leaves tf.memory().numTensors unchanged over 20 forward/backward passes', async () => {
    const model = (await loadPretrained(fixture('models/gpt2'))) as Gpt2LMHeadModel;
    model.train();
    const variables = model.trainableVariables();
    const input = tf.tensor2d([[48, 212, 39, 54, 205, 117, 153], [250, 144, 178, 24, 234, 155, 31]], undefined, 'int32');
    const step = (): number =>
      tf.tidy(() => {
        const { value, grads } = tf.variableGrads(() => causalLmLoss(model.forward(input), input), variables);
        for (const [name, gradient] of Object.entries(grads)) {
          const variable = variables.find((v) => v.name === name)!;
          variable.assign(tf.sub(variable, tf.mul(gradient, 1e-3)));
        }
        return value.dataSync()[0]!;
      });
    // One warm-up pass builds the causal mask the model keeps for this sequence length.
    step();
    const before = tf.memory().numTensors;
    const losses = Array.from({ length: 20 }, step);
    expect(tf.memory().numTensors).toBe(before);
    expect(losses.every(Number.isFinite)).toBe(true);
    expect(variables).toHaveLength(28);
    tf.dispose(input);
    model.dispose();
  });
});
