import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, ShapeError, initRuntime } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { createModel, generate, generateAsync, loadPretrained, pickToken, type Gpt2LMHeadModel, type LlamaForCausalLM } from '../src/index.js';
import { fixture, withoutLeaks } from './helpers.js';

describe('generate', () => {
  let gpt2: Gpt2LMHeadModel;
  let llama: LlamaForCausalLM;

  beforeAll(async () => {
    await initRuntime();
    gpt2 = (await loadPretrained(fixture('models/gpt2'))) as Gpt2LMHeadModel;
    llama = createModel(
      { architectures: ['LlamaForCausalLM'], vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 1 },
      { seed: 5 },
    ) as LlamaForCausalLM;
    // Sharper random weights so greedy choices are not near-ties.
    for (const [, variable] of llama.namedParameters()) tf.tidy(() => variable.assign(tf.mul(variable, 8)));
    llama.eval();
  });

  afterAll(() => {
    gpt2.dispose();
    llama.dispose();
  });

  it('returns the same greedy tokens with and without the key/value cache (GPT-2 and Llama)', async () => {
    await withoutLeaks(() => {
      const prompts = [
        [48, 212, 39, 54],
        [250, 144, 178, 24],
      ];
      const cached = generate(gpt2, prompts, { maxNewTokens: 24, eosTokenId: [] });
      const uncached = generate(gpt2, prompts, { maxNewTokens: 24, eosTokenId: [], useCache: false });
      expect(cached).toEqual(uncached);
      expect(cached[0]).toHaveLength(28);
      const llamaCached = generate(llama, [[1, 7, 9]], { maxNewTokens: 20, eosTokenId: [] });
      const llamaUncached = generate(llama, [[1, 7, 9]], { maxNewTokens: 20, eosTokenId: [], useCache: false });
      expect(llamaCached).toEqual(llamaUncached);
      expect(new Set(llamaCached[0]!.slice(3)).size).toBeGreaterThan(1);
    });
  });

  it('runs prompts of different lengths as one left-padded batch, each row getting the greedy tokens it gets alone (GPT-2 and Llama, with and without the cache)', async () => {
    await withoutLeaks(() => {
      // A random GPT-2 with sharp weights: the fixture's greedy continuations repeat one token, which any batching would match.
      const sharp = createModel({ architectures: ['GPT2LMHeadModel'], vocab_size: 64, n_embd: 32, n_layer: 2, n_head: 4, n_positions: 64 }, { seed: 9 }) as Gpt2LMHeadModel;
      for (const [, variable] of sharp.namedParameters()) tf.tidy(() => variable.assign(tf.mul(variable, 8)));
      sharp.eval();
      for (const [name, model, prompts] of [
        ['gpt2', sharp, [[48, 21, 39, 54, 7], [25], [14, 17, 24]]],
        ['llama', llama, [[1, 7], [3, 9, 27, 40, 2, 11], [5, 60, 13]]],
      ] as const) {
        const alone = prompts.map((prompt) => generate(model, [prompt], { maxNewTokens: 12, eosTokenId: [] })[0]!);
        for (const useCache of [true, false]) {
          const batched = generate(model, prompts.map((prompt) => [...prompt]), { maxNewTokens: 12, eosTokenId: [], useCache });
          expect(batched, `${name}, useCache ${useCache}`).toEqual(alone);
        }
        // Each row its own prompt (no padding) and 12 new tokens, not all one token repeated.
        expect(alone.map((row) => row.length)).toEqual(prompts.map((prompt) => prompt.length + 12));
        expect(alone.every((row, i) => new Set(row.slice(prompts[i]!.length)).size > 1), name).toBe(true);
      }
      sharp.dispose();
      const [alone1, , alone3] = generate(llama, [[1, 7], [3, 9, 27, 40, 2, 11], [5, 60, 13]], { maxNewTokens: 12, eosTokenId: [] });
      // Prompts as typed arrays (an Int32Array of ids each, or one) are rows too, not one flat prompt.
      expect(generate(llama, [Int32Array.of(1, 7), Int32Array.of(5, 60, 13)], { maxNewTokens: 12, eosTokenId: [] })).toEqual([alone1, alone3]);
      expect(generate(llama, Int32Array.of(1, 7), { maxNewTokens: 12, eosTokenId: [] })).toEqual([alone1]);
      // An EOS in one row: it stops and pads with EOS while the others continue, as in an even batch.
      const [first] = generate(gpt2, [[250]], { maxNewTokens: 6, eosTokenId: [] });
      const eos = first![2]!;
      const stopped = generate(gpt2, [[48, 212, 39], [250]], { maxNewTokens: 6, eosTokenId: eos });
      expect(stopped[1]!.slice(stopped[1]!.indexOf(eos, 1)).every((token) => token === eos)).toBe(true);
      expect(stopped[0]).toEqual(generate(gpt2, [[48, 212, 39]], { maxNewTokens: stopped[0]!.length - 3, eosTokenId: eos })[0]);
    });
  });

  it('samples reproducibly for a seed, and differently for another seed', () => {
    const options = { maxNewTokens: 16, doSample: true, temperature: 1.5, topK: 50, topP: 0.95, eosTokenId: [] };
    const a = generate(gpt2, [48, 212], { ...options, seed: 1 });
    const b = generate(gpt2, [48, 212], { ...options, seed: 1 });
    const c = generate(gpt2, [48, 212], { ...options, seed: 2 });
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
  });

  it('stops a row at EOS and pads it with EOS while others continue', () => {
    const [greedy] = generate(gpt2, [48, 212, 39], { maxNewTokens: 6, eosTokenId: [] });
    const eos = greedy![4]!; // the second generated token
    const [stopped] = generate(gpt2, [48, 212, 39], { maxNewTokens: 6, eosTokenId: eos });
    const firstEos = stopped!.indexOf(eos, 3);
    expect(stopped!.length).toBeLessThanOrEqual(9);
    expect(stopped!.slice(firstEos).every((t) => t === eos)).toBe(true);
  });

  it('restores training mode afterwards and rejects bad input with typed errors', () => {
    gpt2.train();
    generate(gpt2, [1, 2], { maxNewTokens: 1 });
    expect(gpt2.training).toBe(true);
    gpt2.eval();
    expect(() => generate(gpt2, [[1, 2], [3], []], {})).toThrow(/prompts must be non-empty \(pass at least one token id per prompt; prompt 2 has none\)/);
    expect(() => generate(gpt2, [], {})).toThrow(/prompts must be non-empty/);
    expect(() => generate(gpt2, [[], [1]], {})).toThrow(/prompt 0 has none/);
    // The longest prompt sets the positions a padded batch needs.
    expect(() => generate(gpt2, [[1], [1, 2]], { maxNewTokens: 63 })).toThrow(ShapeError);
    expect(() => generate(gpt2, [1, 2], { maxNewTokens: 63 })).toThrow(ShapeError);
    expect(() => generate(gpt2, [1, 2], { temperature: 0 })).toThrow(ConfigError);
    expect(() => generate(gpt2, [1, 999], {})).toThrow(ConfigError);
  });
});

describe('generateAsync', () => {
  let llama: LlamaForCausalLM;

  beforeAll(async () => {
    await initRuntime();
    llama = createModel(
      { architectures: ['LlamaForCausalLM'], vocab_size: 64, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 },
      { seed: 6 },
    ) as LlamaForCausalLM;
    // Sharper random weights so greedy choices are not near-ties.
    for (const [, variable] of llama.namedParameters()) tf.tidy(() => variable.assign(tf.mul(variable, 8)));
  });

  afterAll(() => {
    llama.dispose();
  });

  it('gives generate’s tokens (greedy, sampled, ragged, with and without the cache) reading every step’s logits asynchronously', async () => {
    const prompts = [[1, 7], [3, 9, 27, 40, 2, 11], [5, 60, 13]];
    const settings = [
      { maxNewTokens: 10, eosTokenId: [] },
      { maxNewTokens: 10, eosTokenId: [], useCache: false },
      { maxNewTokens: 10, doSample: true, temperature: 1.3, topK: 20, topP: 0.9, seed: 4, eosTokenId: [] },
    ];
    for (const options of settings) {
      const expected = generate(llama, prompts, options);
      const steps: number[][] = [];
      const synchronous = vi.spyOn(tf.Tensor.prototype, 'dataSync');
      const asynchronous = vi.spyOn(tf.Tensor.prototype, 'data');
      const before = tf.memory().numTensors;
      llama.train();
      try {
        expect(await generateAsync(llama, prompts, { ...options, onStep: (tokens) => steps.push([...tokens]) })).toEqual(expected);
        // The logits [rows, vocab] are read asynchronously, once a step, never synchronously (the
        // host-memory backends' id checks and Llama's ragged positions read their int32 inputs).
        const logitsShaped = (tensors: unknown[]): number => (tensors as tf.Tensor[]).filter((t) => t.dtype === 'float32' && t.shape.join() === `${prompts.length},64`).length;
        expect(logitsShaped(synchronous.mock.contexts), JSON.stringify(options)).toBe(0);
        expect(logitsShaped(asynchronous.mock.contexts), JSON.stringify(options)).toBe(10);
        expect(synchronous.mock.contexts.every((t) => (t as tf.Tensor).dtype === 'int32')).toBe(true);
      } finally {
        synchronous.mockRestore();
        asynchronous.mockRestore();
      }
      expect(tf.memory().numTensors).toBe(before);
      expect(llama.training).toBe(true);
      expect(steps).toEqual(Array.from({ length: 10 }, (_, step) => expected.map((row, i) => row[prompts[i]!.length + step]!)));
    }
    llama.eval();
  });

  it('rejects bad input with generate’s typed errors, before any step', async () => {
    await expect(generateAsync(llama, [[1, 2], []], {})).rejects.toThrow(ShapeError);
    await expect(generateAsync(llama, [1, 999], {})).rejects.toThrow(ConfigError);
    await expect(generateAsync(llama, [1, 2], { topP: 0 })).rejects.toThrow(ConfigError);
  });
});

describe('pickToken', () => {
  it('is argmax when not sampling and respects top-k / top-p when sampling', () => {
    const logits = [0, 5, 1, 4];
    expect(pickToken(logits, {}, Math.random)).toBe(1);
    const draws = new Set(Array.from({ length: 200 }, () => pickToken(logits, { doSample: true, topK: 2 }, Math.random)));
    expect([...draws].sort()).toEqual([1, 3]);
    // p(1) ≈ 0.72 < 0.9, so top-p 0.9 keeps tokens 1 and 3 only; top-p 0.5 keeps token 1 only.
    expect(new Set(Array.from({ length: 200 }, () => pickToken(logits, { doSample: true, topP: 0.5 }, Math.random)))).toEqual(new Set([1]));
  });
});
