import { initRuntime } from '@lora/core';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundledBaseDirectory, evaluatePerplexity, generate, loadBundledBase, mobyDickSplits, unigramPerplexity, type ByteTokenizer, type Gpt2LMHeadModel } from '../src/index.js';
import { withoutLeaks } from './helpers.js';

interface TrainingLog {
  parameters: number;
  command: string;
  trainingSeconds: number;
  heldOut: { perplexity: number; bitsPerByte: number };
  unigramBaseline: { perplexity: number };
  steps: { step: number; loss: number }[];
}

const log = JSON.parse(readFileSync(path.join(bundledBaseDirectory(), 'training-log.json'), 'utf8')) as TrainingLog;

describe('loadBundledBase', () => {
  let model: Gpt2LMHeadModel;
  let tokenizer: ByteTokenizer;

  beforeAll(async () => {
    await initRuntime();
    ({ model, tokenizer } = await loadBundledBase());
  });

  afterAll(() => model.dispose());

  it('is a 2–6 M parameter byte-level GPT-2 shipped under 25 MB with its training log', () => {
    expect(model.parameterCount()).toBe(log.parameters);
    expect(log.parameters).toBeGreaterThan(2e6);
    expect(log.parameters).toBeLessThan(6e6);
    expect(model.vocabSize).toBe(tokenizer.vocabSize);
    expect(statSync(path.join(bundledBaseDirectory(), 'model.safetensors')).size).toBeLessThan(25 * 1024 * 1024);
    expect(log.command).toMatch(/pretrain-base\.mjs/u);
    expect(log.steps.at(-1)!.loss).toBeLessThan(log.steps[0]!.loss);
  });

  it('predicts held-out Moby-Dick text clearly better than a unigram byte model', async () => {
    const { train, heldOut } = await mobyDickSplits();
    const slice = heldOut.subarray(0, 128 * 12);
    const ours = await withoutLeaks(() => evaluatePerplexity(model, slice, { contextLength: 128, batchSize: 12 }));
    // The unigram model scores the same predicted bytes (each window's first byte has no prediction).
    const predicted = Array.from({ length: 12 }, (_, w) => Array.from(slice.subarray(w * 128 + 1, (w + 1) * 128))).flat();
    const unigram = unigramPerplexity(train, predicted, tokenizer.vocabSize);
    console.log(`bundled base on a 1536-byte held-out slice: perplexity ${ours.perplexity.toFixed(3)} (${ours.bitsPerToken.toFixed(3)} bits/byte) vs unigram ${unigram.perplexity.toFixed(3)}`);
    expect(ours.tokens).toBe(predicted.length);
    expect(ours.perplexity).toBeLessThan(0.5 * unigram.perplexity);
  });

  it('writes its held-out perplexity into the package README', () => {
    const readme = readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../README.md'), 'utf8');
    expect(readme).toContain(log.heldOut.perplexity.toFixed(3));
    expect(readme).toContain(log.unigramBaseline.perplexity.toFixed(3));
  });

  it('continues a prompt with English-looking bytes', () => {
    const [tokens] = generate(model, [tokenizer.encode('Call me Ishmael. ')], { maxNewTokens: 40, doSample: true, topK: 5, seed: 3 });
    const text = tokenizer.decode(tokens!);
    expect(text.startsWith('Call me Ishmael. ')).toBe(true);
    const letters = (text.slice(17).match(/[A-Za-z ,.]/gu) ?? []).length;
    expect(letters / (text.length - 17)).toBeGreaterThan(0.8);
  });
});
