import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '@lora/core';
import { fileHost } from '@lora/core/internal';
import { PACKAGE } from './config-fields.js';
import { DatasetError } from './errors.js';
import { shuffled } from './random.js';

/** One text example, with a label for classification. */
export interface TextExample {
  /** The raw text, untokenised (from the JSONL field or CSV column chosen by the reader's options). */
  readonly text: string;
  /** Class label (string or number as in the file), absent for plain text. */
  readonly label?: string | number;
}

/** Options for {@link parseJsonl} and {@link readJsonl}. */
export interface JsonlOptions {
  /** Key of the text (default `text`). */
  readonly textField?: string;
  /** Key of the label (default `label`; optional in each record unless `requireLabel`). */
  readonly labelField?: string;
  /** Fail on records without a label (default false). */
  readonly requireLabel?: boolean;
}

/**
 * Parse JSON Lines text into examples. Blank lines are skipped.
 * @throws {DatasetError} with the 1-based `line` of a malformed line or a record missing its text/label.
 */
export function parseJsonl(content: string, options: JsonlOptions & { source?: string } = {}): TextExample[] {
  const source = options.source ?? '<jsonl>';
  const textField = options.textField ?? 'text';
  const labelField = options.labelField ?? 'label';
  const out: TextExample[] = [];
  // A UTF-8 byte-order mark (Windows editors write one) is not part of the first record, as in parseCsv.
  const lines = content.replace(/^\uFEFF/u, '').split(/\r?\n/u);
  for (const [index, line] of lines.entries()) {
    if (line.trim() === '') continue;
    const number = index + 1;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch (error) {
      throw new DatasetError(`[${PACKAGE}] ${source}:${number}: not valid JSON (${(error as Error).message}). Each line must be one JSON object.`, {
        file: source,
        line: number,
        cause: error,
      });
    }
    if (record === null || typeof record !== 'object' || Array.isArray(record)) {
      throw new DatasetError(`[${PACKAGE}] ${source}:${number}: expected a JSON object, got ${Array.isArray(record) ? 'an array' : typeof record}.`, {
        file: source,
        line: number,
      });
    }
    const fields = record as Record<string, unknown>;
    const text = fields[textField];
    if (typeof text !== 'string') {
      throw new DatasetError(`[${PACKAGE}] ${source}:${number}: "${textField}" must be a string, got ${text === undefined ? 'nothing' : typeof text}.`, {
        file: source,
        line: number,
        field: textField,
      });
    }
    const label = fields[labelField];
    if (label === undefined || label === null) {
      if (options.requireLabel) {
        throw new DatasetError(`[${PACKAGE}] ${source}:${number}: "${labelField}" is missing.`, { file: source, line: number, field: labelField });
      }
      out.push({ text });
    } else if (typeof label === 'string' || typeof label === 'number') out.push({ text, label });
    else {
      throw new DatasetError(`[${PACKAGE}] ${source}:${number}: "${labelField}" must be a string or number, got ${typeof label}.`, {
        file: source,
        line: number,
        field: labelField,
      });
    }
  }
  return out;
}

/** Read a JSON Lines file of `{ "text": …, "label": … }` records. @throws {DatasetError} as {@link parseJsonl}, or when the file cannot be read. */
export async function readJsonl(file: string, options: JsonlOptions = {}): Promise<TextExample[]> {
  return parseJsonl(await readText(file), { ...options, source: file });
}

async function readText(file: string): Promise<string> {
  try {
    return await fileHost().readText(file);
  } catch (error) {
    throw new DatasetError(`[${PACKAGE}] Cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}.`, { file, cause: error });
  }
}

/** Options for {@link parseCsv} and {@link readCsv}. */
export interface CsvOptions {
  /** Column holding the text (default `text`). */
  readonly textColumn?: string;
  /** Column holding the label (default `label`; used when present). */
  readonly labelColumn?: string;
  /** Field separator (default `,`). */
  readonly delimiter?: string;
}

/** Split CSV text into records (RFC 4180: quoted fields may hold delimiters, newlines and doubled quotes). */
function csvRecords(content: string, delimiter: string, source: string): { fields: string[]; line: number }[] {
  const records: { fields: string[]; line: number }[] = [];
  let fields: string[] = [];
  let field = '';
  let quoted = false;
  let line = 1;
  let recordLine = 1;
  let fieldStarted = false;
  for (let i = 0; i < content.length; i++) {
    const c = content[i]!;
    if (quoted) {
      if (c === '"') {
        if (content[i + 1] === '"') {
          field += '"';
          i++;
        } else quoted = false;
      } else {
        if (c === '\n') line++;
        field += c;
      }
      continue;
    }
    if (c === '"' && !fieldStarted) {
      quoted = true;
      fieldStarted = true;
    } else if (c === delimiter) {
      fields.push(field);
      field = '';
      fieldStarted = false;
    } else if (c === '\n' || c === '\r') {
      if (c === '\r' && content[i + 1] === '\n') i++;
      fields.push(field);
      if (!(fields.length === 1 && fields[0] === '')) records.push({ fields, line: recordLine });
      fields = [];
      field = '';
      fieldStarted = false;
      line++;
      recordLine = line;
    } else {
      field += c;
      fieldStarted = true;
    }
  }
  if (quoted) throw new DatasetError(`[${PACKAGE}] ${source}:${recordLine}: a quoted field is never closed.`, { file: source, line: recordLine });
  fields.push(field);
  if (!(fields.length === 1 && fields[0] === '')) records.push({ fields, line: recordLine });
  return records;
}

/**
 * Parse CSV with a header row into examples.
 * @throws {DatasetError} naming the missing column, or the line of a row with the wrong number of fields.
 */
export function parseCsv(content: string, options: CsvOptions & { source?: string } = {}): TextExample[] {
  const source = options.source ?? '<csv>';
  const delimiter = options.delimiter ?? ',';
  if (typeof delimiter !== 'string' || [...delimiter].length !== 1 || delimiter === '"' || delimiter === '\n' || delimiter === '\r') {
    throw new ConfigError({
      plugin: PACKAGE,
      field: 'delimiter',
      received: delimiter,
      expected: `one character other than a quote or a line break (reading ${source})`,
      hint: "Pass e.g. { delimiter: ';' } or { delimiter: '\\t' }.",
    });
  }
  const records = csvRecords(content.replace(/^\uFEFF/u, ''), delimiter, source);
  const header = records.shift();
  if (!header) throw new DatasetError(`[${PACKAGE}] ${source} is empty: a header row is needed.`, { file: source });
  const textColumn = options.textColumn ?? 'text';
  const labelColumn = options.labelColumn ?? 'label';
  const textIndex = header.fields.indexOf(textColumn);
  if (textIndex < 0) {
    throw new DatasetError(`[${PACKAGE}] ${source}: no column "${textColumn}" (columns: ${header.fields.join(', ')}). Pass { textColumn }.`, {
      file: source,
      line: 1,
      field: textColumn,
    });
  }
  const labelIndex = header.fields.indexOf(labelColumn);
  if (options.labelColumn && labelIndex < 0) {
    throw new DatasetError(`[${PACKAGE}] ${source}: no column "${labelColumn}" (columns: ${header.fields.join(', ')}).`, { file: source, line: 1, field: labelColumn });
  }
  return records.map(({ fields, line }) => {
    if (fields.length !== header.fields.length) {
      throw new DatasetError(`[${PACKAGE}] ${source}:${line}: ${fields.length} fields, but the header has ${header.fields.length}.`, { file: source, line });
    }
    const text = fields[textIndex]!;
    return labelIndex >= 0 ? { text, label: fields[labelIndex]! } : { text };
  });
}

/** Read a CSV file with a header row. @throws {DatasetError} as {@link parseCsv}, or when the file cannot be read. */
export async function readCsv(file: string, options: CsvOptions = {}): Promise<TextExample[]> {
  return parseCsv(await readText(file), { ...options, source: file });
}

/** Options for {@link trainValidationSplit}. */
export interface SplitOptions {
  /** Share of items for validation (default 0.1). */
  readonly validationFraction?: number;
  /** Shuffle seed (default 0); the same seed always gives the same split. */
  readonly seed?: number;
}

/**
 * Shuffle with a fixed seed and split into train and validation sets (at least one validation item when
 * there are two or more items).
 * @throws {ConfigError} when `validationFraction` is outside [0, 1).
 */
export function trainValidationSplit<T>(items: readonly T[], options: SplitOptions = {}): {
  /** The remaining items, in shuffled order. */
  train: T[];
  /** `round(length · validationFraction)` items, in shuffled order; when the fraction is positive, at least 1 and at most length − 1. */
  validation: T[];
} {
  const fraction = options.validationFraction ?? 0.1;
  if (!(fraction >= 0 && fraction < 1)) {
    throw new ConfigError({ plugin: PACKAGE, field: 'validationFraction', received: fraction, expected: 'a number in [0, 1)' });
  }
  const order = shuffled(items, options.seed ?? 0);
  const count = fraction === 0 ? 0 : Math.min(order.length - 1, Math.max(1, Math.round(order.length * fraction)));
  return { validation: order.slice(0, Math.max(0, count)), train: order.slice(Math.max(0, count)) };
}

/** A padded batch as plain arrays: turn it into tensors inside the loss function with {@link batchTensors}. */
export interface PaddedBatch {
  /** [B, T] token ids, padded with the pad id. */
  readonly inputIds: number[][];
  /** [B, T] of 1 for real tokens and 0 for padding. */
  readonly attentionMask: number[][];
  /** Class labels [B], for classification batches. */
  readonly labels?: number[];
}

/** Options for {@link padBatch} and {@link makeBatches}. */
export interface PaddingOptions {
  /** Id written into padded positions. */
  readonly padTokenId: number;
  /** Truncate longer sequences to this length (default: no truncation). */
  readonly maxLength?: number;
  /**
   * Pad on the `right` (default, for training) or the `left` (as transformers pads prompts for
   * batched generation; this package's `generate` takes the prompts unpadded and pads them itself).
   */
  readonly side?: 'left' | 'right';
}

function checkPaddingOptions(options: PaddingOptions): void {
  if (options === null || typeof options !== 'object') {
    throw new ConfigError({ plugin: PACKAGE, field: 'options', received: options, expected: 'an object with padTokenId', hint: 'Pass e.g. { padTokenId: tokenizer.padTokenId }.' });
  }
  const pad = options.padTokenId;
  if (!(typeof pad === 'number' && Number.isInteger(pad) && pad >= 0)) {
    throw new ConfigError({
      plugin: PACKAGE,
      field: 'padTokenId',
      received: pad,
      expected: 'a non-negative integer token id',
      hint: "Pass the tokenizer's padTokenId (for GPT-2 its eosTokenId), e.g. { padTokenId: 256 } for ByteTokenizer.",
    });
  }
  if (options.maxLength !== undefined) positiveInteger(options.maxLength, 'maxLength', 'Pass e.g. { maxLength: 128 }, or leave it out to keep every token.');
  if (options.side !== undefined && options.side !== 'left' && options.side !== 'right') {
    throw new ConfigError({ plugin: PACKAGE, field: 'side', received: options.side, expected: "'left' or 'right'" });
  }
}

/**
 * Pad (and optionally truncate) sequences to the longest one.
 * @throws {ConfigError} when `padTokenId` is not a non-negative integer, `maxLength` not a positive integer, or `side` not `left`/`right`.
 */
export function padBatch(sequences: readonly (readonly number[])[], options: PaddingOptions): PaddedBatch {
  checkPaddingOptions(options);
  const truncated = sequences.map((s) => (options.maxLength === undefined ? [...s] : s.slice(0, options.maxLength)));
  // A loop, not Math.max(...lengths): spreading hundreds of thousands of arguments overflows the stack.
  let width = 1;
  for (const s of truncated) if (s.length > width) width = s.length;
  const inputIds: number[][] = [];
  const attentionMask: number[][] = [];
  for (const sequence of truncated) {
    const padding = new Array<number>(width - sequence.length).fill(options.padTokenId);
    const zeros = new Array<number>(width - sequence.length).fill(0);
    const ones = new Array<number>(sequence.length).fill(1);
    if (options.side === 'left') {
      inputIds.push([...padding, ...sequence]);
      attentionMask.push([...zeros, ...ones]);
    } else {
      inputIds.push([...sequence, ...padding]);
      attentionMask.push([...ones, ...zeros]);
    }
  }
  return { inputIds, attentionMask };
}

/**
 * Group tokenised examples into padded batches, optionally shuffled with a seed. Labels, when given,
 * go into `labels`.
 * @throws {DatasetError} when some examples have a label and others not; `ConfigError` for bad options as {@link padBatch}.
 */
export function makeBatches(
  examples: readonly { readonly ids: readonly number[]; readonly label?: number }[],
  options: PaddingOptions & { batchSize: number; shuffleSeed?: number },
): PaddedBatch[] {
  if (!Number.isInteger(options.batchSize) || options.batchSize <= 0) {
    throw new ConfigError({ plugin: PACKAGE, field: 'batchSize', received: options.batchSize, expected: 'a positive integer' });
  }
  checkPaddingOptions(options);
  const labelled = examples.filter((e) => e.label !== undefined).length;
  if (labelled > 0 && labelled < examples.length) {
    const index = examples.findIndex((e) => e.label === undefined);
    throw new DatasetError(
      `[${PACKAGE}] makeBatches: ${labelled} of ${examples.length} examples have a label but example ${index} has none; label every example (classification) or none (language modelling).`,
      { file: '<examples>', field: 'label' },
    );
  }
  const order = options.shuffleSeed === undefined ? [...examples] : shuffled(examples, options.shuffleSeed);
  const batches: PaddedBatch[] = [];
  for (let start = 0; start < order.length; start += options.batchSize) {
    const slice = order.slice(start, start + options.batchSize);
    const padded = padBatch(
      slice.map((e) => e.ids),
      options,
    );
    const labels = slice.every((e) => e.label !== undefined) ? slice.map((e) => e.label!) : undefined;
    batches.push(labels ? { ...padded, labels } : padded);
  }
  return batches;
}

/**
 * Tensors of a {@link PaddedBatch}: int32 ids and mask [B, T], int32 labels [B] when present. The caller disposes them (or runs inside `tf.tidy`).
 * @throws {DatasetError} naming the row or example when rows differ in length, an id is not an integer, or a label is not a class index (nothing is allocated then).
 */
export function batchTensors(batch: PaddedBatch): {
  /** int32 token ids [B, T], padding included. */
  inputIds: tf.Tensor2D;
  /** int32 [B, T] of 1 for real tokens and 0 for padding. */
  attentionMask: tf.Tensor2D;
  /** int32 class labels [B]; only when the batch has `labels`. */
  labels?: tf.Tensor1D;
} {
  const rows = batch.inputIds.length;
  const width = batch.inputIds[0]?.length ?? 0;
  for (const [name, matrix] of [['inputIds', batch.inputIds], ['attentionMask', batch.attentionMask]] as const) {
    if (!Array.isArray(matrix) || matrix.length !== rows) {
      throw new DatasetError(`[${PACKAGE}] batchTensors: ${name} has ${Array.isArray(matrix) ? matrix.length : 'no'} rows, inputIds has ${rows}. Build batches with padBatch or makeBatches.`, { file: '<batch>', field: name });
    }
    for (const [i, row] of matrix.entries()) {
      if (!Array.isArray(row) || row.length !== width) {
        throw new DatasetError(`[${PACKAGE}] batchTensors: ${name}[${i}] has ${Array.isArray(row) ? row.length : 'no'} entries, row 0 of inputIds has ${width}; every row must have the same length. Pad them with padBatch.`, {
          file: '<batch>',
          field: name,
        });
      }
      const bad = row.findIndex((value) => !(typeof value === 'number' && Number.isInteger(value)));
      if (bad >= 0) {
        throw new DatasetError(`[${PACKAGE}] batchTensors: ${name}[${i}][${bad}] is ${JSON.stringify(row[bad]) ?? String(row[bad])}, expected an integer.`, { file: '<batch>', field: name });
      }
    }
  }
  if (batch.labels !== undefined) {
    if (!Array.isArray(batch.labels) || batch.labels.length !== rows) {
      throw new DatasetError(`[${PACKAGE}] batchTensors: labels has ${Array.isArray(batch.labels) ? batch.labels.length : 'no'} entries for ${rows} examples.`, { file: '<batch>', field: 'labels' });
    }
    const bad = batch.labels.findIndex((label) => !(typeof label === 'number' && Number.isInteger(label) && label >= 0));
    if (bad >= 0) {
      throw new DatasetError(
        `[${PACKAGE}] batchTensors: the label of example ${bad} is ${JSON.stringify(batch.labels[bad]) ?? String(batch.labels[bad])}, expected a class index (a non-negative integer). Map text labels to indices first (e.g. { spam: 1, ham: 0 }).`,
        { file: '<batch>', field: 'labels' },
      );
    }
  }
  const inputIds = tf.tensor2d(batch.inputIds, undefined, 'int32');
  const attentionMask = tf.tensor2d(batch.attentionMask, undefined, 'int32');
  return batch.labels ? { inputIds, attentionMask, labels: tf.tensor1d(batch.labels, 'int32') } : { inputIds, attentionMask };
}

/** Throw a ConfigError naming `field` unless `value` is a positive integer. */
export function positiveInteger(value: unknown, field: string, hint?: string): asserts value is number {
  if (!(typeof value === 'number' && Number.isInteger(value) && value > 0)) {
    throw new ConfigError({ plugin: PACKAGE, field, received: value, expected: 'a positive integer', hint });
  }
}

/**
 * Cut a long token stream into language-modelling windows of `contextLength` ids, each starting
 * `stride` ids after the previous one (default `contextLength`: no overlap). A shorter tail is dropped.
 * @throws {ConfigError} when `contextLength` or `stride` is not a positive integer.
 */
export function causalLmWindows(ids: ArrayLike<number>, options: { contextLength: number; stride?: number }): number[][] {
  if (options === null || typeof options !== 'object') {
    throw new ConfigError({ plugin: PACKAGE, field: 'options', received: options, expected: 'an object with contextLength', hint: 'Pass e.g. causalLmWindows(ids, { contextLength: 128 }).' });
  }
  positiveInteger(options.contextLength, 'contextLength', 'Pass e.g. { contextLength: 128 }.');
  if (options.stride !== undefined) positiveInteger(options.stride, 'stride', 'Pass e.g. { stride: 64 }, or leave it out for non-overlapping windows.');
  const stride = options.stride ?? options.contextLength;
  const windows: number[][] = [];
  for (let start = 0; start + options.contextLength <= ids.length; start += stride) {
    windows.push(Array.from({ length: options.contextLength }, (_, i) => ids[start + i]!));
  }
  return windows;
}
