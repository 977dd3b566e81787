import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Gpt2LMHeadModel } from './gpt2-model.js';
import { loadPretrained, type LoadPretrainedOptions } from './pretrained.js';
import { ByteTokenizer } from './tokenizer.js';

/**
 * Directory of the bundled base model shipped in this package (`assets/base-moby`): a 4-layer
 * GPT-2 with a byte-level vocabulary, pretrained on Moby-Dick. Holds `config.json`,
 * `model.safetensors`, `tokenizer_config.json` and `training-log.json`.
 */
export function bundledBaseDirectory(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'assets', 'base-moby');
}

/**
 * Load the bundled base model and its {@link ByteTokenizer}. The model is in eval mode; the caller disposes it.
 * @example
 * const { model, tokenizer } = await loadBundledBase();
 * const [tokens] = generate(model, [tokenizer.encode('Call me Ishmael.')], { maxNewTokens: 60, doSample: true, topK: 10 });
 * console.log(tokenizer.decode(tokens));
 */
export async function loadBundledBase(options: Pick<LoadPretrainedOptions, 'onReport'> = {}): Promise<{ model: Gpt2LMHeadModel; tokenizer: ByteTokenizer }> {
  const model = await loadPretrained(bundledBaseDirectory(), { ...options, architecture: 'GPT2LMHeadModel' });
  return { model, tokenizer: new ByteTokenizer() };
}
