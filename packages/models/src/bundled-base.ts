import { LoraError } from '@lora/core';
import { fileHost } from '@lora/core/internal';
import { PACKAGE } from './config-fields.js';
import type { Gpt2LMHeadModel } from './gpt2-model.js';
import { loadPretrained, type LoadPretrainedOptions } from './pretrained.js';
import { ByteTokenizer } from './tokenizer.js';

/** The package that holds the bundled base model's files (13 MB, kept out of this package). */
export const BUNDLED_BASE_PACKAGE = '@lora/base-moby';

/**
 * Directory of the bundled base model: the `assets` folder of the `@lora/base-moby` package, a 4-layer
 * GPT-2 with a byte-level vocabulary pretrained on Moby-Dick. Holds `config.json`, `model.safetensors`,
 * `tokenizer_config.json` and `training-log.json`.
 * @throws {LoraError} when `@lora/base-moby` is not installed (the message says how to install it).
 * @example
 * const config = JSON.parse(readFileSync(fileHost().join(bundledBaseDirectory(), 'config.json'), 'utf8'));
 */
export function bundledBaseDirectory(): string {
  const host = fileHost();
  let manifest: string;
  try {
    // Resolved from this package, where the package manager links the optional peer.
    manifest = host.resolvePackageFile(`${BUNDLED_BASE_PACKAGE}/package.json`, import.meta.url);
  } catch (error) {
    // Without a file system (a browser) the host's own error says so; "not installed" would mislead.
    if (host.kind === 'none') throw error;
    throw new LoraError(
      `[${PACKAGE}] The bundled base model is in its own package, ${BUNDLED_BASE_PACKAGE}, which is not installed. Install it next to ${PACKAGE}: \`npm install ${BUNDLED_BASE_PACKAGE}\`, or pass { directory } to loadBundledBase().`,
      { plugin: PACKAGE, cause: error },
    );
  }
  return host.join(host.dirname(manifest), 'assets');
}

/** Options for {@link loadBundledBase}. */
export interface LoadBundledBaseOptions extends Pick<LoadPretrainedOptions, 'onReport'> {
  /** Directory holding the base model's files; default: {@link bundledBaseDirectory} (the installed `@lora/base-moby`). */
  readonly directory?: string;
}

/**
 * Load the bundled base model and its {@link ByteTokenizer}. The model is in eval mode; the caller disposes it.
 * @throws {LoraError} when no `directory` is given and `@lora/base-moby` is not installed.
 * @example
 * const { model, tokenizer } = await loadBundledBase();
 * const [tokens] = generate(model, [tokenizer.encode('Call me Ishmael.')], { maxNewTokens: 60, doSample: true, topK: 10 });
 * console.log(tokenizer.decode(tokens));
 */
export async function loadBundledBase(options: LoadBundledBaseOptions = {}): Promise<{
  /** The pretrained 4-layer byte-level GPT-2, in eval mode; the caller disposes it. */
  model: Gpt2LMHeadModel;
  /** A new {@link ByteTokenizer}, the vocabulary the model was trained with. */
  tokenizer: ByteTokenizer;
}> {
  const { directory, ...loadOptions } = options;
  const model = await loadPretrained(directory ?? bundledBaseDirectory(), { ...loadOptions, architecture: 'GPT2LMHeadModel' });
  return { model, tokenizer: new ByteTokenizer() };
}
