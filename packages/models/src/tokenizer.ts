import { Tokenizer } from '@huggingface/tokenizers';
import { readJsonFile, writeJsonAtomic } from '@lora/core';
import { fileHost, pathExists } from '@lora/core/internal';
import { PACKAGE } from './config-fields.js';
import { TokenizerError } from './errors.js';

/** Options for {@link TextTokenizer.encode}. */
export interface EncodeOptions {
  /** Add the tokenizer's special tokens (BOS, [CLS]/[SEP]…) as its post-processor says (default true). */
  readonly addSpecialTokens?: boolean;
}

/** Options for {@link TextTokenizer.decode}. */
export interface DecodeOptions {
  /** Leave special tokens out of the text (default false). */
  readonly skipSpecialTokens?: boolean;
}

/** What the models and dataset helpers need from a tokenizer. */
export interface TextTokenizer {
  /** Number of ids, special tokens included. */
  readonly vocabSize: number;
  /** Beginning-of-sequence id (BERT's [CLS] where there is no BOS), or null when the tokenizer has none. */
  readonly bosTokenId: number | null;
  /** End-of-sequence id (BERT's [SEP] where there is no EOS), or null when the tokenizer has none. */
  readonly eosTokenId: number | null;
  /** Id used for padding (falls back to EOS when the tokenizer has no pad token, as is usual for GPT-2), or null. */
  readonly padTokenId: number | null;
  /** Token ids of `text` (special tokens as `options` says). */
  encode(text: string, options?: EncodeOptions): number[];
  /** The text of token ids (special tokens kept unless `options` says to skip them). */
  decode(ids: readonly number[], options?: DecodeOptions): string;
}

/** Refuse anything `decode` cannot turn into text: a non-array, or an id that is not an integer in the vocabulary. */
function checkDecodeIds(ids: unknown, isId: (id: number) => boolean, vocabulary: string, source: string): asserts ids is readonly number[] {
  if (!Array.isArray(ids) && !ArrayBuffer.isView(ids)) {
    throw new TokenizerError(`[${PACKAGE}] decode: expected an array of token ids, got ${typeof ids}. Pass e.g. tokenizer.decode([65, 104]).`, { file: source });
  }
  const list = ids as ArrayLike<unknown>;
  for (let i = 0; i < list.length; i++) {
    const id = list[i];
    if (!(typeof id === 'number' && Number.isInteger(id) && isId(id))) {
      throw new TokenizerError(
        `[${PACKAGE}] decode: ids[${i}] is ${typeof id === 'string' ? JSON.stringify(id) : String(id)}, expected an integer token id in ${vocabulary}. Check that the ids come from this tokenizer (or its model's vocab_size).`,
        { file: source },
      );
    }
  }
}

/** Refuse text that is not a string, naming what was passed. */
function checkEncodeText(text: unknown, source: string): asserts text is string {
  if (typeof text !== 'string') {
    throw new TokenizerError(`[${PACKAGE}] encode: expected a string, got ${text === null ? 'null' : typeof text}. Pass the text, e.g. tokenizer.encode('Call me Ishmael.').`, { file: source });
  }
}

/** `tokenizer_class` written by {@link ByteTokenizer.save}. */
export const BYTE_TOKENIZER_CLASS = 'LoraByteTokenizer';

/**
 * A byte-level tokenizer: ids 0–255 are the UTF-8 bytes of the text, 256 is `<|endoftext|>` (BOS, EOS
 * and padding). Lossless for any text, with no vocabulary file; the bundled base model uses it.
 *
 * @example
 * const tokenizer = new ByteTokenizer();
 * tokenizer.encode('Ahab'); // [65, 104, 97, 98]
 * tokenizer.decode([65, 104, 97, 98, 256]); // 'Ahab<|endoftext|>'
 */
export class ByteTokenizer implements TextTokenizer {
  /** The special token string. */
  static readonly END_OF_TEXT = '<|endoftext|>';
  readonly vocabSize = 257;
  /** 256, `<|endoftext|>`: put first by `encode` with `addSpecialTokens`. */
  readonly bosTokenId = 256;
  /** 256, `<|endoftext|>` (the same id as BOS and padding). */
  readonly eosTokenId = 256;
  readonly padTokenId = 256;
  private readonly encoder = new TextEncoder();
  private readonly decoder = new TextDecoder('utf-8');

  /**
   * UTF-8 bytes of `text`. With `addSpecialTokens` (default false, as GPT-2 adds none) `<|endoftext|>`
   * is put first. The literal text `<|endoftext|>` is encoded as bytes, never as the special id.
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    checkEncodeText(text, 'ByteTokenizer');
    const bytes = Array.from(this.encoder.encode(text));
    return options.addSpecialTokens ? [this.bosTokenId, ...bytes] : bytes;
  }

  /**
   * Text of the bytes; invalid UTF-8 becomes U+FFFD. Id 256 is `<|endoftext|>`; `[]` gives `''`.
   * @throws {TokenizerError} naming the position of an id that is not an integer in [0, 256].
   */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    checkDecodeIds(ids, (id) => id >= 0 && id < this.vocabSize, `[0, ${this.vocabSize})`, 'ByteTokenizer');
    let out = '';
    let run: number[] = [];
    const flush = (): void => {
      if (run.length > 0) out += this.decoder.decode(new Uint8Array(run));
      run = [];
    };
    for (const id of ids) {
      if (id >= 0 && id < 256) run.push(id);
      else {
        flush();
        if (!options.skipSpecialTokens) out += ByteTokenizer.END_OF_TEXT;
      }
    }
    flush();
    return out;
  }

  /** Write `tokenizer_config.json` so {@link loadTokenizer} recognises the directory. */
  async save(directory: string): Promise<void> {
    const file = fileHost().join(directory, 'tokenizer_config.json');
    if ((await pathExists(directory)) && !(await pathExists(`${directory}/.`))) {
      throw new TokenizerError(`[${PACKAGE}] ByteTokenizer.save: ${directory} is a file, not a directory. Pass the model directory (it is created if missing); nothing was written.`, { file });
    }
    try {
      await this.write(file);
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (typeof code !== 'string') throw error;
      throw new TokenizerError(`[${PACKAGE}] ByteTokenizer.save: cannot write ${file} (${code}): a part of the path is a file or not writable. Pass another directory; nothing was written.`, { file, cause: error });
    }
  }

  private async write(file: string): Promise<void> {
    await writeJsonAtomic(file, {
      tokenizer_class: BYTE_TOKENIZER_CLASS,
      bos_token: ByteTokenizer.END_OF_TEXT,
      eos_token: ByteTokenizer.END_OF_TEXT,
      pad_token: ByteTokenizer.END_OF_TEXT,
      vocab_size: this.vocabSize,
      model_max_length: null,
    });
  }
}

function tokenString(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object' && typeof (value as Record<string, unknown>)['content'] === 'string') {
    return (value as Record<string, string>)['content']!;
  }
  return null;
}

/**
 * What this package uses of `@huggingface/tokenizers`' `Tokenizer`, as a structural type. Naming that
 * library's own class in our declaration files would make every TypeScript consumer load its types,
 * which are ESM-only with extensionless imports and fail under \`node16\` resolution (and from a
 * CommonJS file); the object at run time is that library's `Tokenizer`, with its full API.
 */
export interface HuggingFaceTokenizerObject {
  /** Encode `text` (`add_special_tokens` defaults to true). */
  encode(text: string, options?: { add_special_tokens?: boolean }): {
    /** Token ids, special tokens included when added. */
    ids: number[];
    /** The token string of each id, aligned with `ids`. */
    tokens: string[];
    /** One entry per id, all 1 (this library's `encode` does not pad). */
    attention_mask: number[];
  };
  /** Decode token ids to text. */
  decode(tokenIds: number[], options?: { skip_special_tokens?: boolean }): string;
  /** The token strings of `text`, without ids. */
  tokenize(text: string): string[];
  /** The id of one token string, undefined when it is not in the vocabulary. */
  token_to_id(token: string): number | undefined;
  /** The vocabulary (token → id), with added tokens when asked. */
  get_vocab(withAddedTokens?: boolean): Map<string, number>;
}

/**
 * A Hugging Face `tokenizer.json` (BPE as GPT-2 and Llama, WordPiece as BERT, Unigram/SentencePiece
 * style) run by the maintained `@huggingface/tokenizers` library, with the special tokens named in
 * `tokenizer_config.json`.
 *
 * @example
 * const tokenizer = await HuggingFaceTokenizer.load('path/to/model'); // tokenizer.json (+ tokenizer_config.json)
 * tokenizer.encode('Hello world'); // GPT-2: [15496, 995]
 */
export class HuggingFaceTokenizer implements TextTokenizer {
  readonly vocabSize: number;
  /** Id of `tokenizer_config.json`'s `bos_token`, else of its `cls_token`; null when neither is set or in the vocabulary. */
  readonly bosTokenId: number | null;
  /** Id of `tokenizer_config.json`'s `eos_token`, else of its `sep_token`; null when neither is set or in the vocabulary. */
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  /** The underlying `@huggingface/tokenizers` `Tokenizer`, for anything not wrapped here. */
  readonly tokenizer: HuggingFaceTokenizerObject;

  /**
   * @param tokenizerJson the parsed `tokenizer.json`.
   * @param config the parsed `tokenizer_config.json` (default {}).
   * @throws {TokenizerError} when the library rejects the file.
   */
  constructor(tokenizerJson: object, config: Readonly<Record<string, unknown>> = {}, source = 'tokenizer.json') {
    try {
      this.tokenizer = new Tokenizer(tokenizerJson, config);
    } catch (error) {
      throw new TokenizerError(`[${PACKAGE}] Cannot build a tokenizer from ${source}: ${error instanceof Error ? error.message : String(error)}.`, {
        file: source,
        cause: error,
      });
    }
    this.vocabSize = this.tokenizer.get_vocab(true).size;
    const idOf = (key: string): number | null => {
      const text = tokenString(config[key]);
      return text === null ? null : (this.tokenizer.token_to_id(text) ?? null);
    };
    this.bosTokenId = idOf('bos_token') ?? idOf('cls_token');
    this.eosTokenId = idOf('eos_token') ?? idOf('sep_token');
    this.padTokenId = idOf('pad_token') ?? this.eosTokenId;
    this.source = source;
  }

  private readonly source: string;
  private ids: Set<number> | undefined;

  private isId(id: number): boolean {
    this.ids ??= new Set(this.tokenizer.get_vocab(true).values());
    return this.ids.has(id);
  }

  /**
   * Load `tokenizer.json` (and `tokenizer_config.json` when present) from a directory.
   * @throws {TokenizerError} naming the file when it is missing or malformed.
   */
  static async load(directory: string): Promise<HuggingFaceTokenizer> {
    const file = fileHost().join(directory, 'tokenizer.json');
    if (!(await pathExists(file))) {
      throw new TokenizerError(`[${PACKAGE}] ${file} does not exist: a Hugging Face tokenizer directory needs tokenizer.json.`, { file });
    }
    let json: unknown;
    try {
      json = await readJsonFile(file);
    } catch (error) {
      throw new TokenizerError(`[${PACKAGE}] ${file} is not valid JSON.`, { file, cause: error });
    }
    if (json === null || typeof json !== 'object' || typeof (json as Record<string, unknown>)['model'] !== 'object') {
      throw new TokenizerError(`[${PACKAGE}] ${file} is not a Hugging Face tokenizer.json (no "model" object).`, { file });
    }
    const config = await readOptionalConfig(directory);
    return new HuggingFaceTokenizer(json, config, file);
  }

  /** Token ids of `text`; special tokens (e.g. BERT's [CLS]/[SEP]) are added unless `options.addSpecialTokens` is false. */
  encode(text: string, options: EncodeOptions = {}): number[] {
    checkEncodeText(text, this.source);
    return this.tokenizer.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
  }

  /** The token strings of `text` (no special tokens). */
  tokenize(text: string): string[] {
    return this.tokenizer.tokenize(text);
  }

  /**
   * The text of token ids; special tokens are kept unless `options.skipSpecialTokens` is true; `[]` gives `''`.
   * @throws {TokenizerError} naming the position of an id that is not an integer in the vocabulary.
   */
  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    checkDecodeIds(ids, (id) => this.isId(id), `this tokenizer's vocabulary (${this.vocabSize} ids)`, this.source);
    if (ids.length === 0) return '';
    return this.tokenizer.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false });
  }
}

async function readOptionalConfig(directory: string): Promise<Record<string, unknown>> {
  const file = fileHost().join(directory, 'tokenizer_config.json');
  if (!(await pathExists(file))) return {};
  let json: unknown;
  try {
    json = await readJsonFile(file);
  } catch (error) {
    throw new TokenizerError(`[${PACKAGE}] ${file} is not valid JSON (${error instanceof Error ? error.message : String(error)}). Fix or remove the file.`, { file, cause: error });
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new TokenizerError(`[${PACKAGE}] ${file} must hold a JSON object.`, { file });
  }
  return json as Record<string, unknown>;
}

/**
 * Load the tokenizer of a model directory: a {@link ByteTokenizer} when `tokenizer_config.json` says
 * `LoraByteTokenizer` (the bundled base), otherwise `tokenizer.json` through {@link HuggingFaceTokenizer}.
 * @throws {TokenizerError} naming the file when neither is usable.
 */
export async function loadTokenizer(directory: string): Promise<TextTokenizer> {
  const config = await readOptionalConfig(directory);
  if (config['tokenizer_class'] === BYTE_TOKENIZER_CLASS) return new ByteTokenizer();
  return HuggingFaceTokenizer.load(directory);
}
