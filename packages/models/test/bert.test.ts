import * as tf from '@tensorflow/tfjs-core';
import { initRuntime } from '@lora/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadPretrained, type BertForSequenceClassification, type BertModel } from '../src/index.js';
import { fixture, flat, ids, readJson, relativeError, withoutLeaks } from './helpers.js';

interface Reference {
  inputs: { input_ids: number[][]; attention_mask: number[][]; token_type_ids: number[][] };
  logits: unknown;
  last_hidden_state: unknown;
}

describe('BertForSequenceClassification', () => {
  const reference = readJson<Reference>(fixture('models/bert/reference.json'));
  let model: BertForSequenceClassification;

  beforeAll(async () => {
    await initRuntime();
    model = (await loadPretrained(fixture('models/bert'))) as BertForSequenceClassification;
  });

  afterAll(() => model.dispose());

  it('matches transformers logits and hidden states with a padded position and token types', async () => {
    await withoutLeaks(() => {
      const input = ids(reference.inputs.input_ids);
      const attentionMask = ids(reference.inputs.attention_mask);
      const tokenTypeIds = ids(reference.inputs.token_type_ids);
      const logits = model.forward(input, { attentionMask, tokenTypeIds });
      const hidden = model.bert.forward(input, { attentionMask, tokenTypeIds });
      const logitsError = relativeError(logits, flat(reference.logits));
      const hiddenError = relativeError(hidden, flat(reference.last_hidden_state));
      console.log(`bert fixture: logits rel err ${logitsError.toExponential(2)}, hidden rel err ${hiddenError.toExponential(2)}`);
      expect(logits.shape).toEqual([2, 2]);
      expect(logitsError).toBeLessThan(1e-4);
      expect(hiddenError).toBeLessThan(1e-4);
      tf.dispose([input, attentionMask, tokenTypeIds, logits, hidden]);
    });
  });

  it('ignores padded keys: changing the padded token leaves real positions unchanged', async () => {
    await withoutLeaks(() => {
      const attentionMask = ids(reference.inputs.attention_mask);
      const a = ids(reference.inputs.input_ids);
      const changed = reference.inputs.input_ids.map((row) => [...row]);
      changed[1]![6] = 99;
      const b = ids(changed);
      const ha = model.bert.forward(a, { attentionMask });
      const hb = model.bert.forward(b, { attentionMask });
      const real = tf.tidy(() => tf.max(tf.abs(tf.sub(tf.slice(ha, [1, 0, 0], [1, 6, 64]), tf.slice(hb, [1, 0, 0], [1, 6, 64])))).dataSync()[0]!);
      expect(real).toBeLessThan(1e-6);
      tf.dispose([attentionMask, a, b, ha, hb]);
    });
  });

  it('uses dropout only in training mode', async () => {
    await withoutLeaks(() => {
      const input = ids(reference.inputs.input_ids);
      const first = model.forward(input);
      const second = model.forward(input);
      expect(relativeError(first, second.dataSync())).toBe(0);
      model.train();
      const trained = model.forward(input);
      model.eval();
      expect(relativeError(trained, first.dataSync())).toBeGreaterThan(1e-3);
      tf.dispose([input, first, second, trained]);
    });
  });

  it('loads the classification checkpoint into a bare BertModel by stripping the bert. prefix', async () => {
    let prefix: string | null = null;
    let ignored: readonly string[] = [];
    const bare = (await loadPretrained(fixture('models/bert'), {
      architecture: 'BertModel',
      onReport: (report) => {
        prefix = report.prefixChange;
        ignored = report.ignored;
      },
    })) as BertModel;
    expect(prefix).toBe('-bert');
    expect(ignored).toEqual(['classifier.bias', 'classifier.weight']);
    await withoutLeaks(() => {
      const input = ids(reference.inputs.input_ids);
      const attentionMask = ids(reference.inputs.attention_mask);
      const hidden = bare.forward(input, { attentionMask });
      expect(relativeError(hidden, flat(reference.last_hidden_state))).toBeLessThan(1e-4);
      tf.dispose([input, attentionMask, hidden]);
    });
    bare.dispose();
  });
});
