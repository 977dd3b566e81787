import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, LoraError, ShapeError, type AdapterInputs } from '@lora/core';
import { KeyValueCache } from './attention.js';
import { PACKAGE } from './config-fields.js';
import type { CausalLanguageModel } from './pretrained-model.js';
import { seededRandom } from './random.js';

/** Options for {@link generate}. */
export interface GenerateOptions {
  /** Tokens to add to each prompt (default 20). */
  readonly maxNewTokens?: number;
  /** Sample from the distribution (default false: greedy argmax). */
  readonly doSample?: boolean;
  /** Divide logits by this before sampling (default 1). */
  readonly temperature?: number;
  /** Keep only the k most likely tokens when sampling (default 0: off). */
  readonly topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p when sampling (default 1: off). */
  readonly topP?: number;
  /** Seed of the sampler (default 0). */
  readonly seed?: number;
  /** Stop a row when it produces one of these (default the model's `eos_token_id`; `[]` never stops early). */
  readonly eosTokenId?: number | readonly number[];
  /** Reuse keys and values of earlier positions (default true). Without it every step recomputes the whole sequence. */
  readonly useCache?: boolean;
  /** Called after each step with the new token of every row. */
  readonly onStep?: (tokens: readonly number[], step: number) => void;
  /** Per-forward inputs for the adapters of the `AdapterModel` wrapping the model (e.g. a condition per row), for every step. */
  readonly adapterInputs?: AdapterInputs;
}

/** Refuse a model that does not produce next-token logits (a bare trunk, BERT): generate needs a causal LM. */
function checkCausalLanguageModel(model: CausalLanguageModel): void {
  const candidate = model as Partial<CausalLanguageModel> | null | undefined;
  const isInteger = (value: unknown): boolean => typeof value === 'number' && Number.isInteger(value) && value > 0;
  if (
    candidate === null ||
    typeof candidate !== 'object' ||
    typeof candidate.forward !== 'function' ||
    !isInteger(candidate.vocabSize) ||
    !isInteger(candidate.numLayers) ||
    !(candidate.maxPositions === null || isInteger(candidate.maxPositions))
  ) {
    const name = (candidate as { architecture?: unknown } | null | undefined)?.architecture ?? (candidate as object | null | undefined)?.constructor?.name ?? candidate;
    throw new ConfigError({
      plugin: PACKAGE,
      field: 'model',
      received: name,
      expected: 'a causal language model (a CausalLanguageModel: GPT2LMHeadModel or LlamaForCausalLM) that returns next-token logits',
      hint: 'A bare trunk (GPT2Model, LlamaModel) returns hidden states and BERT is an encoder; load the model with loadCausalLanguageModel(directory).',
    });
  }
}

const zeros = (count: number): number[] => new Array<number>(count).fill(0);
const ones = (count: number): number[] => new Array<number>(count).fill(1);

function checkOption(condition: boolean, field: string, received: unknown, expected: string): void {
  if (!condition) throw new ConfigError({ plugin: PACKAGE, field, received, expected });
}

/**
 * Pick the next token from one row of logits: greedy argmax, or a sample after temperature, top-k and
 * top-p filtering (in that order, as transformers' logits warpers).
 */
export function pickToken(
  logits: ArrayLike<number>,
  options: { doSample?: boolean; temperature?: number; topK?: number; topP?: number },
  random: () => number,
): number {
  if (!options.doSample) {
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
    return best;
  }
  const temperature = options.temperature ?? 1;
  let order = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]!);
  if (options.topK && options.topK > 0) order = order.slice(0, options.topK);
  const top = logits[order[0]!]! / temperature;
  let weights = order.map((i) => Math.exp(logits[i]! / temperature - top));
  let total = weights.reduce((a, b) => a + b, 0);
  const topP = options.topP ?? 1;
  if (topP < 1) {
    let cumulative = 0;
    let keep = 0;
    while (keep < weights.length && cumulative < topP * total) cumulative += weights[keep++]!;
    order = order.slice(0, Math.max(1, keep));
    weights = weights.slice(0, Math.max(1, keep));
    total = weights.reduce((a, b) => a + b, 0);
  }
  let r = random() * total;
  for (let i = 0; i < order.length; i++) {
    r -= weights[i]!;
    if (r <= 0) return order[i]!;
  }
  return order[order.length - 1]!;
}

/** What {@link generate} and {@link generateAsync} check and set up before their first step. */
interface Generation {
  readonly rows: number[][];
  readonly pads: readonly number[];
  readonly ragged: boolean;
  readonly maxNewTokens: number;
  readonly eos: ReadonlySet<number>;
  readonly random: () => number;
  readonly cache: KeyValueCache | undefined;
  /** Free the cache and put the model back in the mode it was in. */
  readonly close: () => void;
}

/** Check the prompts and options (throwing before anything is allocated), then set up a generation: the model in eval mode until `close`. */
function startGeneration(model: CausalLanguageModel, prompts: readonly number[] | ArrayLike<number> | readonly ArrayLike<number>[], options: GenerateOptions): Generation {
  checkCausalLanguageModel(model);
  // A list of prompts (arrays, or typed arrays such as an Int32Array of ids), or one prompt.
  const isRow = (value: unknown): value is ArrayLike<number> => Array.isArray(value) || (ArrayBuffer.isView(value) && !(value instanceof DataView));
  const rows: number[][] = (prompts.length > 0 && isRow(prompts[0]) ? (prompts as readonly ArrayLike<number>[]) : [prompts as readonly number[]]).map((row) => Array.from(row));
  const maxNewTokens = options.maxNewTokens ?? 20;
  checkOption(Number.isInteger(maxNewTokens) && maxNewTokens >= 0, 'maxNewTokens', maxNewTokens, 'a non-negative integer');
  checkOption(options.temperature === undefined || options.temperature > 0, 'temperature', options.temperature, 'a positive number');
  checkOption(options.topK === undefined || (Number.isInteger(options.topK) && options.topK >= 0), 'topK', options.topK, 'a non-negative integer');
  checkOption(options.topP === undefined || (options.topP > 0 && options.topP <= 1), 'topP', options.topP, 'a number in (0, 1]');
  const empty = rows.findIndex((row) => row.length === 0);
  if (rows.length === 0 || empty >= 0) {
    throw new ShapeError(
      `[${PACKAGE}] generate: prompts must be non-empty (pass at least one token id per prompt${rows.length > 1 ? `; prompt ${empty} has none` : ''})`,
      [null, null],
      [rows.length, rows[Math.max(0, empty)]?.length ?? 0],
    );
  }
  // The longest prompt sets the batch's width; shorter ones are left-padded to it.
  const length = Math.max(...rows.map((row) => row.length));
  const pads = rows.map((row) => length - row.length);
  for (const row of rows) {
    const bad = row.find((id) => !Number.isInteger(id) || id < 0 || id >= model.vocabSize);
    if (bad !== undefined) throw new ConfigError({ plugin: PACKAGE, field: 'prompts', received: bad, expected: `token ids in [0, ${model.vocabSize})` });
  }
  if (model.maxPositions !== null && length + maxNewTokens > model.maxPositions) {
    throw new ShapeError(`[${PACKAGE}] generate: prompt + maxNewTokens exceeds the model's positions`, [null, model.maxPositions], [rows.length, length + maxNewTokens]);
  }
  const isToken = (id: unknown): id is number => typeof id === 'number' && Number.isInteger(id) && id >= 0 && id < model.vocabSize;
  let eosList: readonly number[];
  if (options.eosTokenId === undefined) {
    // The config's eos_token_id may lie outside a resized vocabulary: such an id can never be produced.
    eosList = model.eosTokenIds.filter(isToken);
  } else {
    const given: readonly unknown[] = Array.isArray(options.eosTokenId) ? (options.eosTokenId as readonly unknown[]) : [options.eosTokenId];
    checkOption(given.every(isToken), 'eosTokenId', options.eosTokenId, `a token id in [0, ${model.vocabSize}) or a list of them ([] never stops early)`);
    eosList = given as readonly number[];
  }
  checkOption(options.seed === undefined || (typeof options.seed === 'number' && Number.isSafeInteger(options.seed)), 'seed', options.seed, 'an integer');
  const cache = (options.useCache ?? true) ? new KeyValueCache(model.numLayers) : undefined;
  const wasTraining = model.training;
  model.eval();
  return {
    rows,
    pads,
    ragged: pads.some((pad) => pad > 0),
    maxNewTokens,
    eos: new Set(eosList),
    random: seededRandom(options.seed ?? 0),
    cache,
    close: () => {
      cache?.dispose();
      model.train(wasTraining);
    },
  };
}

/** A step's logits, read synchronously and freed. */
function readLogits(logits: tf.Tensor2D): tf.TypedArray {
  try {
    return logits.dataSync();
  } finally {
    logits.dispose();
  }
}

/** A step's logits, read asynchronously and freed once the read has settled. */
async function readLogitsAsync(logits: tf.Tensor2D): Promise<tf.TypedArray> {
  try {
    return await logits.data();
  } finally {
    logits.dispose();
  }
}

/**
 * The steps of a generation: each yields the next-token logits [rows, vocab] of the model (a tensor
 * the driver reads, synchronously or not, and disposes) and receives their values, then picks the
 * tokens. Returns the rows. The driver closes the generation afterwards.
 */
function* generationSteps(model: CausalLanguageModel, generation: Generation, options: GenerateOptions): Generator<tf.Tensor2D, number[][], tf.TypedArray> {
  const { rows, pads, ragged, cache, eos, random } = generation;
  const finished = rows.map(() => false);
  for (let step = 0; step < generation.maxNewTokens; step++) {
    const cached = cache !== undefined && cache.length > 0;
    const feed = cached ? rows.map((row) => row.slice(-1)) : rows.map((row, i) => [...zeros(pads[i]!), ...row]);
    const lastLogits = model.withAdapterInputs(options.adapterInputs, () =>
      tf.tidy(() => {
        const input = tf.tensor2d(feed, undefined, 'int32');
        // Ragged prompts: the pads masked out (for every key the cache holds, too), and each row's
        // positions from 0 at its first token, as transformers' generate derives them from the mask.
        const padding = ragged
          ? {
              attentionMask: tf.tensor2d(rows.map((row, i) => [...zeros(pads[i]!), ...ones(row.length)]), undefined, 'int32'),
              positionIds: tf.tensor2d(rows.map((row, i) => (cached ? [row.length - 1] : [...zeros(pads[i]!), ...row.map((_, position) => position)])), undefined, 'int32'),
            }
          : {};
        const logits = model.forward(input, { cache, ...padding });
        const [batch, time, vocab] = logits.shape as [number, number, number];
        return tf.reshape(tf.slice(logits, [0, time - 1, 0], [batch, 1, vocab]), [batch, vocab]) as tf.Tensor2D;
      }),
    );
    const values = yield lastLogits;
    const vocab = model.vocabSize;
    const nonFinite = values.findIndex((value) => !Number.isFinite(value));
    if (nonFinite >= 0) {
      // Argmax or sampling over NaN would emit token 0 (or any token) forever.
      throw new LoraError(
        `[${PACKAGE}] generate: the model's logits for prompt ${Math.floor(nonFinite / vocab)} at step ${step} hold ${values[nonFinite]} (token ${nonFinite % vocab}); no token can be chosen. ` +
          'The weights hold NaN or ±Infinity (loaded with allowNonFinite, or a diverged run): load finite weights.',
        { plugin: PACKAGE },
      );
    }
    const chosen = rows.map((row, i) => {
      if (finished[i]) {
        const pad = row[row.length - 1]!;
        row.push(pad);
        return pad;
      }
      const token = pickToken(values.subarray(i * vocab, (i + 1) * vocab), options, random);
      row.push(token);
      if (eos.has(token)) finished[i] = true;
      return token;
    });
    options.onStep?.(chosen, step);
    if (finished.every(Boolean)) break;
  }
  return rows;
}

/**
 * Continue prompts with a decoder model: greedy or sampled (temperature, top-k, top-p), with a
 * key/value cache by default. Prompts of different lengths run as one batch, left-padded as
 * transformers pads them: an attention mask leaves the pads out and each row's positions count
 * from its own first token, so a row gets the tokens it would get alone (greedy). The model runs
 * in eval mode (dropout off) and is put back in its previous mode afterwards. Rows that reach an
 * EOS token are padded with it until every row has finished.
 *
 * Each token's logits are read synchronously, which on a GPU backend (webgl, webgpu) waits for the
 * device and blocks the page: there, use {@link generateAsync}.
 *
 * @returns each prompt (without padding) followed by its new tokens (plain arrays; no tensors to dispose).
 * @throws {ShapeError} for an empty prompt, or a sequence longer than the model supports.
 * @throws {ConfigError} naming an invalid option, or `model` when it is not a causal LM (a trunk, BERT).
 * @throws {LoraError} when the logits hold NaN or ±Infinity (non-finite weights); no token is emitted for that step.
 * @example
 * const [tokens] = generate(model, [tokenizer.encode('Call me')], { maxNewTokens: 40, doSample: true, topK: 20 });
 * console.log(tokenizer.decode(tokens));
 */
export function generate(model: CausalLanguageModel, prompts: readonly number[] | ArrayLike<number> | readonly ArrayLike<number>[], options: GenerateOptions = {}): number[][] {
  const generation = startGeneration(model, prompts, options);
  try {
    const steps = generationSteps(model, generation, options);
    let next = steps.next();
    while (!next.done) next = steps.next(readLogits(next.value));
    return next.value;
  } finally {
    generation.close();
  }
}

/**
 * {@link generate}, reading each token's logits asynchronously (`await tensor.data()`): the same
 * tokens, for GPU backends (webgl, webgpu), where a synchronous read waits for the device and blocks
 * the page. The model is in eval mode until the promise settles; do not train or run it meanwhile.
 *
 * @returns a promise of each prompt followed by its new tokens.
 * @throws as {@link generate} (the promise rejects).
 * @example
 * const [tokens] = await generateAsync(model, [tokenizer.encode('Call me')], { maxNewTokens: 40 });
 */
export async function generateAsync(model: CausalLanguageModel, prompts: readonly number[] | ArrayLike<number> | readonly ArrayLike<number>[], options: GenerateOptions = {}): Promise<number[][]> {
  const generation = startGeneration(model, prompts, options);
  try {
    const steps = generationSteps(model, generation, options);
    let next = steps.next();
    while (!next.done) next = steps.next(await readLogitsAsync(next.value));
    return next.value;
  } finally {
    generation.close();
  }
}
