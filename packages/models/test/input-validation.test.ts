import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, LoraError, ShapeError, initRuntime } from '@lora/core';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  BertModel,
  ByteTokenizer,
  DatasetError,
  HuggingFaceTokenizer,
  KeyValueCache,
  TokenizerError,
  batchTensors,
  causalLmWindows,
  createModel,
  evaluatePerplexity,
  generate,
  loadPretrained,
  loadTokenizer,
  makeBatches,
  padBatch,
  parseBertConfig,
  parseCsv,
  parseGpt2Config,
  parseJsonl,
  parseLlamaConfig,
  unigramPerplexity,
  type CausalLanguageModel,
  type Gpt2LMHeadModel,
  type LlamaForCausalLM,
  type LlamaModel,
} from '../src/index.js';
import { fixture, ids, withoutLeaks } from './helpers.js';

const GPT2_CONFIG = { architectures: ['GPT2LMHeadModel'], vocab_size: 40, n_embd: 16, n_head: 2, n_layer: 2, n_positions: 16 };
const LLAMA_CONFIG = { vocab_size: 40, hidden_size: 16, intermediate_size: 24, num_hidden_layers: 2, num_attention_heads: 2 };
let gpt2: Gpt2LMHeadModel;
let scratch: string;

function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a throw');
}

beforeAll(async () => {
  await initRuntime();
  gpt2 = createModel(GPT2_CONFIG, { seed: 1 }) as Gpt2LMHeadModel;
  gpt2.eval();
  scratch = await mkdtemp(path.join(tmpdir(), 'lora-models-inputs-'));
});

afterAll(async () => {
  gpt2.dispose();
  await rm(scratch, { recursive: true, force: true });
});

describe('causalLmWindows', () => {
  it('refuses a context length or stride that is not a positive integer instead of looping forever', () => {
    const stream = Array.from({ length: 20 }, (_, i) => i);
    for (const contextLength of [0, -1, 2.5, Number.NaN]) {
      const error = thrown(() => causalLmWindows(stream, { contextLength }));
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as ConfigError).field).toBe('contextLength');
    }
    for (const stride of [0, -2, 1.5]) expect((thrown(() => causalLmWindows(stream, { contextLength: 4, stride })) as ConfigError).field).toBe('stride');
    expect(thrown(() => (causalLmWindows as unknown as (ids: number[]) => unknown)(stream))).toBeInstanceOf(ConfigError);
    expect(causalLmWindows(stream, { contextLength: 8, stride: 6 })).toHaveLength(3);
  });
});

describe('evaluatePerplexity', () => {
  it('refuses contexts with nothing to score, bad batch sizes and ids outside the vocabulary', async () => {
    await withoutLeaks(() => {
      const stream = Array.from({ length: 40 }, (_, i) => i % 40);
      for (const contextLength of [0, 1, -3, 2.5]) expect((thrown(() => evaluatePerplexity(gpt2, stream, { contextLength })) as ConfigError).field).toBe('contextLength');
      for (const batchSize of [0, -1, 1.5]) expect((thrown(() => evaluatePerplexity(gpt2, stream, { contextLength: 8, batchSize })) as ConfigError).field).toBe('batchSize');
      const nan = [...stream];
      nan[5] = Number.NaN;
      expect((thrown(() => evaluatePerplexity(gpt2, nan, { contextLength: 8 })) as ConfigError).field).toBe('ids[5]');
      const fractional = [...stream];
      fractional[3] = 65.5;
      expect((thrown(() => evaluatePerplexity(gpt2, fractional, { contextLength: 8 })) as ConfigError).field).toBe('ids[3]');
      expect(evaluatePerplexity(gpt2, stream, { contextLength: 8 }).tokens).toBe(5 * 7);
    });
  });
});

describe('unigramPerplexity', () => {
  it('refuses an empty test stream, a bad vocabulary size and ids outside it', () => {
    expect((thrown(() => unigramPerplexity([1, 2], [], 257)) as ConfigError).field).toBe('testIds');
    for (const vocabSize of [0, -1, 2.5]) expect((thrown(() => unigramPerplexity([1], [1], vocabSize)) as ConfigError).field).toBe('vocabSize');
    expect((thrown(() => unigramPerplexity([1, 300], [1], 257)) as ConfigError).field).toBe('trainIds[1]');
    expect((thrown(() => unigramPerplexity([1], [1, -1], 257)) as ConfigError).field).toBe('testIds[1]');
    expect(unigramPerplexity([0, 0, 1], [0], 2).perplexity).toBeCloseTo(5 / 3, 12);
  });
});

describe('config readers', () => {
  it('refuse values that make every logit NaN, naming the file and field', () => {
    const cases: [() => unknown, string][] = [
      [() => parseLlamaConfig({ ...LLAMA_CONFIG, rope_theta: 0 }, 'dir/config.json'), 'rope_theta'],
      [() => parseLlamaConfig({ ...LLAMA_CONFIG, rope_theta: -10000 }, 'dir/config.json'), 'rope_theta'],
      [() => parseLlamaConfig({ ...LLAMA_CONFIG, rms_norm_eps: -1e-6 }, 'dir/config.json'), 'rms_norm_eps'],
      [() => parseLlamaConfig({ ...LLAMA_CONFIG, rope_scaling: { rope_type: 'linear', factor: 0 } }, 'dir/config.json'), 'factor'],
      [() => parseLlamaConfig({ ...LLAMA_CONFIG, rope_scaling: { rope_type: 'linear', factor: -2 } }, 'dir/config.json'), 'factor'],
      [() => parseGpt2Config({ ...GPT2_CONFIG, layer_norm_epsilon: -1e-5 }, 'dir/config.json'), 'layer_norm_epsilon'],
      [() => parseBertConfig({ layer_norm_eps: -1e-12 }, 'dir/config.json'), 'layer_norm_eps'],
    ];
    for (const [parse, field] of cases) {
      const error = thrown(parse) as ConfigError;
      expect(error).toBeInstanceOf(ConfigError);
      expect(error.field).toBe(field);
      expect(error.message).toContain('dir/config.json');
    }
    expect(parseGpt2Config({ ...GPT2_CONFIG, layer_norm_epsilon: 0 }).layerNormEpsilon).toBe(0);
  });
});

describe('generate', () => {
  it('refuses a model that is not a causal LM', async () => {
    const trunk = await loadPretrained(fixture('models/gpt2'), { architecture: 'GPT2Model' });
    const bert = await loadPretrained(fixture('models/bert'));
    await withoutLeaks(() => {
      for (const model of [trunk, bert]) {
        const error = thrown(() => generate(model as unknown as CausalLanguageModel, [[1, 2]], { maxNewTokens: 2 })) as ConfigError;
        expect(error).toBeInstanceOf(ConfigError);
        expect(error.field).toBe('model');
        expect(error.message).toMatch(/a causal language model \(a CausalLanguageModel/u);
      }
    });
    trunk.dispose();
    bert.dispose();
  });

  it('refuses bad eosTokenId and seed values, and stops on non-finite logits', async () => {
    await withoutLeaks(() => {
      for (const eosTokenId of [9999, -1, 1.5, '3', [3, 40]]) {
        expect((thrown(() => generate(gpt2, [[1, 2]], { maxNewTokens: 2, eosTokenId: eosTokenId as never })) as ConfigError).field).toBe('eosTokenId');
      }
      for (const seed of [Number.NaN, 1.5, 'abc']) expect((thrown(() => generate(gpt2, [[1, 2]], { maxNewTokens: 2, doSample: true, seed: seed as never })) as ConfigError).field).toBe('seed');
    });
    const broken = createModel(GPT2_CONFIG, { seed: 2 }) as Gpt2LMHeadModel;
    const weight = broken.getSubmodule('transformer.ln_f').getOwnParameter('weight')!;
    tf.tidy(() => weight.assign(tf.fill(weight.shape, Number.NaN)));
    await withoutLeaks(() => {
      const error = thrown(() => generate(broken, [[1, 2]], { maxNewTokens: 4 }));
      expect(error).toBeInstanceOf(LoraError);
      expect(error.message).toMatch(/logits for prompt 0 at step 0 hold NaN/u);
    });
    broken.dispose();
  });
});

describe('LlamaModel', () => {
  it('frees its rotary tables when the attention mask has the wrong shape', async () => {
    const trunk = createModel(LLAMA_CONFIG, { architecture: 'LlamaModel' }) as LlamaModel;
    await withoutLeaks(() => {
      const input = ids([[1, 2, 3]]);
      const mask = tf.ones([1, 5], 'int32');
      expect(() => trunk.forward(input, { attentionMask: mask })).toThrow(ShapeError);
      input.dispose();
      mask.dispose();
    });
    trunk.dispose();
  });
});

describe('LlamaForCausalLM', () => {
  it('refuses fractional or negative position ids (rotary angles would silently be wrong)', async () => {
    const llama = createModel(LLAMA_CONFIG, { architecture: 'LlamaForCausalLM' }) as LlamaForCausalLM;
    await withoutLeaks(() => {
      const input = ids([[1, 2]]);
      const fractional = tf.tensor2d([[0, 1.5]]);
      expect((thrown(() => llama.forward(input, { positionIds: fractional })) as ConfigError).field).toBe('positionIds[0][1]');
      const negative = tf.tensor1d([-1, 0], 'int32');
      expect((thrown(() => llama.forward(input, { positionIds: negative })) as ConfigError).field).toBe('positionIds[0]');
      const fine = tf.tensor1d([3, 4], 'int32');
      tf.dispose(llama.forward(input, { positionIds: fine }));
      tf.dispose([input, fractional, negative, fine]);
    });
    llama.dispose();
  });
});

describe('KeyValueCache', () => {
  it('refuses a cache of another layer count or batch size before writing to it', async () => {
    const llama = createModel(LLAMA_CONFIG, { architecture: 'LlamaForCausalLM' }) as LlamaForCausalLM;
    await withoutLeaks(() => {
      for (const model of [gpt2, llama] as CausalLanguageModel[]) {
        const input = ids([[1, 2, 3]]);
        for (const layers of [1, 3]) {
          const cache = new KeyValueCache(layers);
          const error = thrown(() => model.forward(input, { cache }));
          expect(error.message).toMatch(new RegExp(`this cache has ${layers} layers? but the model has 2; nothing was cached`, 'u'));
          expect(cache.length).toBe(0);
          cache.dispose();
        }
        const cache = new KeyValueCache(2);
        tf.dispose(model.forward(input, { cache }));
        const two = ids([[4], [5]]);
        expect(() => model.forward(two, { cache })).toThrow(/the cache holds 1 row but this forward has 2; nothing was cached/u);
        expect(cache.length).toBe(3);
        cache.dispose();
        input.dispose();
        two.dispose();
      }
    });
    llama.dispose();
  });
});

describe('model inputs', () => {
  it('refuse fractional, bool and out-of-range ids instead of truncating them', async () => {
    await withoutLeaks(() => {
      const fractional = tf.tensor2d([[1.7, 2.2]]);
      const error = thrown(() => gpt2.forward(fractional)) as ConfigError;
      expect(error).toBeInstanceOf(ConfigError);
      expect(error.field).toBe('inputIds[0][0]');
      const bool = tf.tensor2d([[true, false]], undefined, 'bool');
      expect((thrown(() => gpt2.forward(bool)) as ConfigError).field).toBe('inputIds');
      const whole = tf.tensor2d([[1, 2]]); // float32 holding integers is accepted
      tf.dispose(gpt2.forward(whole));
      const input = ids([[1, 2]]);
      const positions = ids([[0, 16]]);
      const positionError = thrown(() => gpt2.forward(input, { positionIds: positions })) as ConfigError;
      expect(positionError.field).toBe('positionIds[0][1]');
      expect(positionError.message).toMatch(/n_positions 16/u);
      tf.dispose([fractional, bool, whole, input, positions]);
    });
  });

  it('refuse a forward pass or generation of a disposed GPT-2, Llama or BERT with one LoraError, leaking nothing', async () => {
    const bertConfig = { vocab_size: 30, hidden_size: 8, num_attention_heads: 2, num_hidden_layers: 1, intermediate_size: 12, max_position_embeddings: 8 };
    const models = [createModel(GPT2_CONFIG, { seed: 2 }), createModel({ ...LLAMA_CONFIG, architectures: ['LlamaForCausalLM'] }, { seed: 2 }), new BertModel(parseBertConfig(bertConfig))];
    for (const model of models) model.dispose();
    const disposed = /^\[@lora\/core\] Embedding: this layer was disposed \(with its model or AdapterModel\), its weights freed\. Load or create the model again/u;
    await withoutLeaks(() => {
      const input = ids([[1, 2, 3]]);
      for (const model of models) {
        const error = thrown(() => model.forward(input));
        expect(error).toBeInstanceOf(LoraError);
        expect(error.message).toMatch(disposed);
      }
      expect(() => generate(models[0] as CausalLanguageModel, [1, 2], { maxNewTokens: 2 })).toThrow(disposed);
      expect(() => generate(models[1] as CausalLanguageModel, [1, 2], { maxNewTokens: 2 })).toThrow(disposed);
      input.dispose();
    });
  });

  it('refuse BERT position and token-type ids of the wrong shape or range', async () => {
    const bert = new BertModel(parseBertConfig({ vocab_size: 30, hidden_size: 8, num_attention_heads: 2, num_hidden_layers: 1, intermediate_size: 12, max_position_embeddings: 8 }));
    await withoutLeaks(() => {
      const input = ids([[1, 2, 3]]);
      const twoRows = ids([
        [0, 1, 2],
        [0, 1, 2],
      ]);
      expect(() => bert.forward(input, { positionIds: twoRows })).toThrow(ShapeError);
      const short = ids([[0, 1]]);
      expect(() => bert.forward(input, { positionIds: short })).toThrow(ShapeError);
      expect(() => bert.forward(input, { tokenTypeIds: short })).toThrow(ShapeError);
      const types = ids([[0, 2, 0]]);
      const typeError = thrown(() => bert.forward(input, { tokenTypeIds: types })) as ConfigError;
      expect(typeError.field).toBe('tokenTypeIds[0][1]');
      expect(typeError.message).toMatch(/type_vocab_size 2/u);
      const farPositions = ids([[0, 1, 9]]);
      expect((thrown(() => bert.forward(input, { positionIds: farPositions })) as ConfigError).message).toMatch(/max_position_embeddings 8/u);
      tf.dispose([input, twoRows, short, types, farPositions]);
    });
    bert.dispose();
  });
});

describe('ByteTokenizer', () => {
  it('refuses ids outside the vocabulary and text that is not a string', async () => {
    const tokenizer = new ByteTokenizer();
    expect(tokenizer.decode([])).toBe('');
    for (const [bad, at] of [
      [[65, 257], 1],
      [[-1], 0],
      [[Number.NaN], 0],
      [[65, 65.7], 1],
      [['65'], 0],
    ] as const) {
      const error = thrown(() => tokenizer.decode(bad as unknown as number[]));
      expect(error).toBeInstanceOf(TokenizerError);
      expect(error.message).toContain(`ids[${at}]`);
    }
    expect(thrown(() => tokenizer.encode(undefined as never))).toBeInstanceOf(TokenizerError);
    expect(thrown(() => tokenizer.encode(123 as never))).toBeInstanceOf(TokenizerError);
    const file = path.join(scratch, 'a-file');
    await writeFile(file, 'x');
    await expect(tokenizer.save(file)).rejects.toThrow(TokenizerError);
    await expect(tokenizer.save(path.join(file, 'below'))).rejects.toThrow(TokenizerError);
  });
});

describe('HuggingFaceTokenizer', () => {
  it('decodes [] to an empty string and refuses ids outside its vocabulary', async () => {
    const tokenizer = await HuggingFaceTokenizer.load(path.join(path.dirname(new URL(import.meta.url).pathname), 'fixtures/wordpiece'));
    expect(tokenizer.decode([])).toBe('');
    const error = thrown(() => tokenizer.decode([1, tokenizer.vocabSize + 5]));
    expect(error).toBeInstanceOf(TokenizerError);
    expect(error.message).toContain('ids[1]');
    expect(thrown(() => tokenizer.decode([1.5]))).toBeInstanceOf(TokenizerError);
    expect(thrown(() => tokenizer.encode(123 as never))).toBeInstanceOf(TokenizerError);
  });

  it('says which file is not valid JSON when tokenizer_config.json is broken', async () => {
    const directory = path.join(scratch, 'broken-config');
    await mkdir(directory, { recursive: true });
    await writeFile(path.join(directory, 'tokenizer_config.json'), '{ not json');
    const error = await loadTokenizer(directory).then(
      () => null,
      (caught: unknown) => caught as Error,
    );
    expect(error).toBeInstanceOf(TokenizerError);
    expect(error!.message).toMatch(/tokenizer_config\.json is not valid JSON/u);
  });
});

describe('padBatch', () => {
  it('refuses bad options and handles many sequences', () => {
    for (const maxLength of [0, -1, 1.5]) expect((thrown(() => padBatch([[1, 2]], { padTokenId: 0, maxLength })) as ConfigError).field).toBe('maxLength');
    for (const padTokenId of [null, undefined, -1, 1.5]) expect((thrown(() => padBatch([[1, 2]], { padTokenId: padTokenId as never })) as ConfigError).field).toBe('padTokenId');
    expect((thrown(() => padBatch([[1, 2]], { padTokenId: 0, side: 'middle' as never })) as ConfigError).field).toBe('side');
    const many = Array.from({ length: 200_000 }, (_, i) => (i === 7 ? [1, 2, 3] : [1]));
    expect(padBatch(many, { padTokenId: 0 }).inputIds[0]).toEqual([1, 0, 0]);
  });
});

describe('makeBatches', () => {
  it('refuses examples of which only some are labelled', () => {
    const error = thrown(() => makeBatches([{ ids: [1], label: 1 }, { ids: [2] }], { padTokenId: 0, batchSize: 2 }));
    expect(error).toBeInstanceOf(DatasetError);
    expect(error.message).toMatch(/1 of 2 examples have a label but example 1 has none/u);
  });
});

describe('batchTensors', () => {
  it('refuses text labels and ragged rows before allocating', async () => {
    await withoutLeaks(() => {
      const labels = thrown(() => batchTensors({ inputIds: [[1], [2]], attentionMask: [[1], [1]], labels: [1, 'spam' as never] }));
      expect(labels).toBeInstanceOf(DatasetError);
      expect(labels.message).toMatch(/the label of example 1 is "spam"/u);
      const ragged = thrown(() => batchTensors({ inputIds: [[1, 2], [3]], attentionMask: [[1, 1], [1]] }));
      expect(ragged).toBeInstanceOf(DatasetError);
      expect(ragged.message).toMatch(/inputIds\[1\] has 1 entries/u);
    });
  });
});

describe('parseJsonl', () => {
  it('skips a UTF-8 byte-order mark', () => {
    expect(parseJsonl('\uFEFF{"text":"a"}\n{"text":"b"}')).toEqual([{ text: 'a' }, { text: 'b' }]);
  });
});

describe('parseCsv', () => {
  it('refuses an empty or multi-character delimiter', () => {
    for (const delimiter of ['', ';;', '"']) expect((thrown(() => parseCsv('text\na', { delimiter })) as ConfigError).field).toBe('delimiter');
    expect(parseCsv('text;label\na;1', { delimiter: ';' })).toEqual([{ text: 'a', label: '1' }]);
  });
});
