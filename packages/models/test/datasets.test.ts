import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, initRuntime } from '@lora/core';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DatasetError,
  batchTensors,
  causalLmWindows,
  loadMobyDick,
  loadSpamAssassin,
  loadStateOfTheUnion,
  makeBatches,
  mobyDickSplits,
  padBatch,
  parseCsv,
  parseJsonl,
  readCsv,
  readJsonl,
  trainValidationSplit,
} from '../src/index.js';

let scratch: string;

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'lora-models-datasets-'));
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

function caughtSync(fn: () => unknown): DatasetError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(DatasetError);
    return error as DatasetError;
  }
  throw new Error('expected a DatasetError');
}

describe('readJsonl', () => {
  it('reads text and label records, skipping blank lines', async () => {
    const file = path.join(scratch, 'ok.jsonl');
    await writeFile(file, '{"text": "Call me Ishmael.", "label": 1}\n\n{"text": "Thar she blows", "label": "spam"}\n{"text": "no label"}\n');
    expect(await readJsonl(file)).toEqual([{ text: 'Call me Ishmael.', label: 1 }, { text: 'Thar she blows', label: 'spam' }, { text: 'no label' }]);
  });

  it('reports a malformed line with its line number in a DatasetError', async () => {
    const file = path.join(scratch, 'bad.jsonl');
    await writeFile(file, '{"text": "one"}\n{"text": "two"}\n\n{"text": "four",}\n');
    const error = await readJsonl(file).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(DatasetError);
    expect((error as DatasetError).line).toBe(4);
    expect((error as DatasetError).file).toBe(file);
    expect((error as Error).message).toContain(`${file}:4`);
  });

  it('names the line and field of a record without text or with a bad label', () => {
    const missing = caughtSync(() => parseJsonl('{"text": "a"}\n{"body": "b"}', { source: 'x.jsonl' }));
    expect([missing.line, missing.field]).toEqual([2, 'text']);
    const label = caughtSync(() => parseJsonl('{"text": "a", "label": [1]}'));
    expect([label.line, label.field]).toEqual([1, 'label']);
    const required = caughtSync(() => parseJsonl('{"text": "a"}', { requireLabel: true }));
    expect(required.field).toBe('label');
    expect(caughtSync(() => parseJsonl('[1, 2]')).line).toBe(1);
  });
});

describe('readCsv', () => {
  it('parses quoted fields holding commas, quotes and newlines', async () => {
    const file = path.join(scratch, 'data.csv');
    await writeFile(file, 'label,text\r\nham,"Hello, ""world"""\nspam,"two\nlines"\n');
    expect(await readCsv(file)).toEqual([
      { text: 'Hello, "world"', label: 'ham' },
      { text: 'two\nlines', label: 'spam' },
    ]);
    expect(parseCsv('body\tclass\nhi\t1\n', { delimiter: '\t', textColumn: 'body', labelColumn: 'class' })).toEqual([{ text: 'hi', label: '1' }]);
  });

  it('reports missing columns and rows with the wrong number of fields', () => {
    expect(caughtSync(() => parseCsv('a,b\n1,2\n')).field).toBe('text');
    const row = caughtSync(() => parseCsv('text,label\n"x\ny",1\nz\n', { source: 'f.csv' }));
    expect(row.line).toBe(4);
    expect(caughtSync(() => parseCsv('text\n"never closed')).line).toBe(2);
  });
});

describe('trainValidationSplit', () => {
  it('splits by a fixed seed: same seed, same split; disjoint and complete', () => {
    const items = Array.from({ length: 50 }, (_, i) => i);
    const a = trainValidationSplit(items, { validationFraction: 0.2, seed: 7 });
    const b = trainValidationSplit(items, { validationFraction: 0.2, seed: 7 });
    const c = trainValidationSplit(items, { validationFraction: 0.2, seed: 8 });
    expect(a).toEqual(b);
    expect(a.validation).not.toEqual(c.validation);
    expect(a.validation).toHaveLength(10);
    expect([...a.train, ...a.validation].sort((x, y) => x - y)).toEqual(items);
    expect(() => trainValidationSplit(items, { validationFraction: 1 })).toThrow(ConfigError);
  });
});

describe('padBatch / makeBatches / batchTensors', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('pads right or left with attention masks and truncates', () => {
    expect(padBatch([[1, 2, 3], [4]], { padTokenId: 0 })).toEqual({ inputIds: [[1, 2, 3], [4, 0, 0]], attentionMask: [[1, 1, 1], [1, 0, 0]] });
    expect(padBatch([[1, 2, 3], [4]], { padTokenId: 9, side: 'left', maxLength: 2 })).toEqual({ inputIds: [[1, 2], [9, 4]], attentionMask: [[1, 1], [0, 1]] });
  });

  it('groups examples into labelled batches and makes int32 tensors', () => {
    const examples = [
      { ids: [5, 6], label: 1 },
      { ids: [7], label: 0 },
      { ids: [8, 9, 10], label: 1 },
    ];
    const batches = makeBatches(examples, { batchSize: 2, padTokenId: 0 });
    expect(batches).toHaveLength(2);
    expect(batches[0]).toEqual({ inputIds: [[5, 6], [7, 0]], attentionMask: [[1, 1], [1, 0]], labels: [1, 0] });
    const shuffledOnce = makeBatches(examples, { batchSize: 3, padTokenId: 0, shuffleSeed: 3 });
    expect(shuffledOnce).toEqual(makeBatches(examples, { batchSize: 3, padTokenId: 0, shuffleSeed: 3 }));
    const before = tf.memory().numTensors;
    const tensors = batchTensors(batches[0]!);
    expect(tensors.inputIds.dtype).toBe('int32');
    expect(tensors.labels!.shape).toEqual([2]);
    tf.dispose([tensors.inputIds, tensors.attentionMask, tensors.labels!]);
    expect(tf.memory().numTensors).toBe(before);
    expect(() => makeBatches(examples, { batchSize: 0, padTokenId: 0 })).toThrow(ConfigError);
  });

  it('cuts language-modelling windows', () => {
    expect(causalLmWindows([1, 2, 3, 4, 5, 6, 7], { contextLength: 3 })).toEqual([
      [1, 2, 3],
      [4, 5, 6],
    ]);
    expect(causalLmWindows([1, 2, 3, 4, 5], { contextLength: 3, stride: 1 })).toHaveLength(3);
  });
});

describe('default corpora', () => {
  it('loads Moby-Dick in book order and a fixed held-out split', async () => {
    const chapters = await loadMobyDick();
    expect(chapters.find((c) => c.chapter === '1')!.text.startsWith('Call me Ishmael.')).toBe(true);
    const { train, heldOut } = await mobyDickSplits();
    expect(heldOut.length / (train.length + heldOut.length)).toBeCloseTo(0.05, 2);
    expect(new TextDecoder().decode(train.subarray(train.length - 2))).toBe('\n\n');
  });

  it('loads State of the Union speeches with year, president and party', async () => {
    const speeches = await loadStateOfTheUnion();
    expect(speeches.length).toBeGreaterThan(200);
    const first = speeches.find((s) => s.year === 1790)!;
    expect(first.president).toBe('George Washington');
    expect(first.text).toMatch(/^Fellow-Citizens/u);
    expect(first.label).toBe(first.party);
  });

  it('loads SpamAssassin messages labelled spam = 1, ham = 0', async () => {
    const messages = await loadSpamAssassin();
    expect(messages).toHaveLength(6046);
    expect(messages.filter((m) => m.label === 1)).toHaveLength(1896);
    expect(messages.every((m) => (m.label === 1) === m.group.startsWith('spam'))).toBe(true);
  });
});
