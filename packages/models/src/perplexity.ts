import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, causalLmLoss } from '@lora/core';
import { PACKAGE } from './config-fields.js';
import { causalLmWindows, positiveInteger } from './datasets.js';

/** Throw a ConfigError naming the first id that is not an integer in [0, vocabSize). */
function checkTokenIds(ids: ArrayLike<number>, vocabSize: number, field: string): void {
  if (ids === null || typeof ids !== 'object' || typeof ids.length !== 'number') {
    throw new ConfigError({ plugin: PACKAGE, field, received: ids, expected: 'an array of token ids' });
  }
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!(typeof id === 'number' && Number.isInteger(id) && id >= 0 && id < vocabSize)) {
      throw new ConfigError({ plugin: PACKAGE, field: `${field}[${i}]`, received: id, expected: `a token id: an integer in [0, ${vocabSize})` });
    }
  }
}
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
 * @throws {ConfigError} when the stream is shorter than one window, `contextLength` is not an integer in
 *   [2, the model's positions], `batchSize` is not a positive integer, or an id is not an integer in [0, vocabSize).
 */
export function evaluatePerplexity(
  model: CausalLanguageModel,
  ids: ArrayLike<number>,
  options: { contextLength?: number; batchSize?: number } = {},
): PerplexityResult {
  const contextLength = options.contextLength ?? Math.min(model.maxPositions ?? 128, 128);
  positiveInteger(contextLength, 'contextLength', 'Pass e.g. { contextLength: 128 }.');
  if (contextLength < 2) {
    throw new ConfigError({ plugin: PACKAGE, field: 'contextLength', received: contextLength, expected: 'at least 2 (a window of one token has no token to score)', hint: 'Pass e.g. { contextLength: 128 }.' });
  }
  if (model.maxPositions !== null && contextLength > model.maxPositions) {
    throw new ConfigError({ plugin: PACKAGE, field: 'contextLength', received: contextLength, expected: `at most the model's ${model.maxPositions} positions` });
  }
  const batchSize = options.batchSize ?? 8;
  positiveInteger(batchSize, 'batchSize', 'Pass e.g. { batchSize: 8 }.');
  checkTokenIds(ids, model.vocabSize, 'ids');
  const windows = causalLmWindows(ids, { contextLength });
  if (windows.length === 0) {
    throw new ConfigError({ plugin: PACKAGE, field: 'ids', received: ids.length, expected: `at least contextLength (${contextLength}) tokens` });
  }
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
 * @throws {ConfigError} when `vocabSize` is not a positive integer, `testIds` is empty, or an id is not an integer in [0, vocabSize).
 */
export function unigramPerplexity(trainIds: ArrayLike<number>, testIds: ArrayLike<number>, vocabSize: number): PerplexityResult {
  positiveInteger(vocabSize, 'vocabSize', 'Pass the tokenizer\'s vocabulary size, e.g. 257 for ByteTokenizer.');
  checkTokenIds(trainIds, vocabSize, 'trainIds');
  checkTokenIds(testIds, vocabSize, 'testIds');
  if (testIds.length === 0) {
    throw new ConfigError({ plugin: PACKAGE, field: 'testIds', received: testIds, expected: 'at least one token id (an empty stream has no perplexity)' });
  }
  const counts = new Float64Array(vocabSize).fill(1);
  for (let i = 0; i < trainIds.length; i++) counts[trainIds[i]!]! += 1;
  const total = trainIds.length + vocabSize;
  let nll = 0;
  for (let i = 0; i < testIds.length; i++) nll -= Math.log(counts[testIds[i]!]! / total);
  return result(nll / testIds.length, testIds.length);
}
