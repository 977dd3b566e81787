import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, causalLmLoss } from '@lora/core';
import { PACKAGE } from './config-fields.js';
import { causalLmWindows } from './datasets.js';
import type { CausalLanguageModel } from './pretrained-model.js';

/** What {@link evaluatePerplexity} and {@link unigramPerplexity} measure. */
export interface PerplexityResult {
  /** Mean negative log-likelihood per predicted token, in nats. */
  readonly loss: number;
  /** exp(loss). */
  readonly perplexity: number;
  /** Bits per token (loss / ln 2): bits per byte for a byte-level model. */
  readonly bitsPerToken: number;
  /** Number of tokens predicted. */
  readonly tokens: number;
}

function result(loss: number, tokens: number): PerplexityResult {
  return { loss, perplexity: Math.exp(loss), bitsPerToken: loss / Math.LN2, tokens };
}

/**
 * Perplexity of a causal LM on a token stream, cut into non-overlapping windows of `contextLength`
 * (default: the model's positions, at most 128); in each window every token after the first is
 * predicted. Runs in eval mode, without gradients.
 * @throws {ConfigError} when the stream is shorter than one window.
 */
export function evaluatePerplexity(
  model: CausalLanguageModel,
  ids: ArrayLike<number>,
  options: { contextLength?: number; batchSize?: number } = {},
): PerplexityResult {
  const contextLength = options.contextLength ?? Math.min(model.maxPositions ?? 128, 128);
  const windows = causalLmWindows(ids, { contextLength });
  if (windows.length === 0) {
    throw new ConfigError({ plugin: PACKAGE, field: 'ids', received: ids.length, expected: `at least contextLength (${contextLength}) tokens` });
  }
  const batchSize = options.batchSize ?? 8;
  const wasTraining = model.training;
  model.eval();
  let total = 0;
  let count = 0;
  try {
    for (let start = 0; start < windows.length; start += batchSize) {
      const batch = windows.slice(start, start + batchSize);
      const predicted = batch.length * (contextLength - 1);
      total += tf.tidy(() => {
        const input = tf.tensor2d(batch, undefined, 'int32');
        return causalLmLoss(model.forward(input), input).dataSync()[0]!;
      }) * predicted;
      count += predicted;
    }
  } finally {
    model.train(wasTraining);
  }
  return result(total / count, count);
}

/**
 * Perplexity of a unigram model (token frequencies of `trainIds`, add-one smoothed over `vocabSize`) on
 * `testIds`: the baseline a language model must beat.
 */
export function unigramPerplexity(trainIds: ArrayLike<number>, testIds: ArrayLike<number>, vocabSize: number): PerplexityResult {
  const counts = new Float64Array(vocabSize).fill(1);
  for (let i = 0; i < trainIds.length; i++) counts[trainIds[i]!]! += 1;
  const total = trainIds.length + vocabSize;
  let nll = 0;
  for (let i = 0; i < testIds.length; i++) nll -= Math.log(counts[testIds[i]!]! / total);
  return result(nll / Math.max(1, testIds.length), testIds.length);
}
