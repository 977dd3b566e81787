import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, ConfigError, createLoraRegistry, initRuntime, lora, ShapeError, train } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { hyper, type HyperLoraState } from '../src/index.js';
import { TinyModel, tinyConfig } from './helpers.js';

beforeAll(async () => {
  await initRuntime();
});

const EN_FR = { src: 'en', tgt: 'fr' };

function create(config = tinyConfig()): { peft: AdapterModel<TinyModel>; state: HyperLoraState } {
  const peft = AdapterModel.create(new TinyModel(1), { registry: createLoraRegistry({ plugins: [lora(), hyper({ seed: 9 })] }), plugin: 'hyper', config });
  const state = peft.adapterState('default') as HyperLoraState;
  // Away from the exact start, so that conditions change the output.
  let seed = 700;
  for (const [, variable] of state.namedTensors()) tf.tidy(() => variable.assign(tf.add(variable, tf.randomNormal(variable.shape, 0, 0.3, 'float32', seed++))));
  return { peft, state };
}

/** The error `fn` throws (the test fails when it throws none). */
function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected an error');
}

describe('HyperLoraState.beginForward / factorsFor: the condition', () => {
  it('refuses a forward pass without a condition in one line naming the adapter and how to pass one, leaving no tensors', async () => {
    await withoutTensorLeaks(() => {
      const { peft } = create();
      peft.model.eval();
      const x = tf.randomNormal([2, 3, 6], 0, 1, 'float32', 51);
      const reference = peft.forward({ condition: EN_FR }, x);
      for (const [label, run] of [
        ['model.forward(x)', () => peft.model.forward(x)],
        ['peft.forward({}, x)', () => peft.forward({}, x)],
        ['a misspelled key', () => peft.forward({ cond: EN_FR }, x)],
        ['condition: undefined', () => peft.forward({ condition: undefined }, x)],
        ['condition: null', () => peft.forward({ condition: null }, x)],
      ] as const) {
        const error = thrown(run);
        expect(error, label).toBeInstanceOf(ConfigError);
        expect(error.message, label).toMatch(/^\[@lora\/hyper\] HyperLoRA adapter "default" got no condition/u);
        expect(error.message, label).toContain("peft.forward({ condition: { src: 'en', tgt: 'en' } }, x)");
        expect(error.message, label).toContain("peft.adapterState('default').setDefaultCondition(");
        expect(error.message, label).toContain('{ condition: {} } runs every factor at its learned null embedding');
        expect(error.message, label).not.toContain('\n');
      }
      expect(thrown(() => peft.forward({ cond: EN_FR }, x)).message).toContain('(adapter inputs with keys cond)');
      // The model works as before.
      const again = peft.forward({ condition: EN_FR }, x);
      expect(Array.from(again.dataSync())).toEqual(Array.from(reference.dataSync()));
      tf.dispose([x, reference, again]);
      peft.dispose();
    });
  });

  it('runs every factor at its null embedding when asked with {}, and uses a default condition when one is set', async () => {
    await withoutTensorLeaks(() => {
      const { peft, state } = create();
      peft.model.eval();
      const x = tf.randomNormal([2, 3, 6], 0, 1, 'float32', 52);
      const nulls = peft.forward({ condition: {} }, x);
      const enFr = peft.forward({ condition: EN_FR }, x);
      const base = peft.disableAdapters(() => peft.model.forward(x));
      expect(tf.tidy(() => tf.max(tf.abs(tf.sub(nulls, base))).dataSync()[0]!)).toBeGreaterThan(1e-4);
      state.setDefaultCondition({});
      const byDefault = peft.model.forward(x);
      expect(Array.from(byDefault.dataSync())).toEqual(Array.from(nulls.dataSync()));
      state.setDefaultCondition(EN_FR);
      const enFrByDefault = peft.model.forward(x);
      expect(Array.from(enFrByDefault.dataSync())).toEqual(Array.from(enFr.dataSync()));
      state.setDefaultCondition(undefined);
      expect(() => peft.model.forward(x)).toThrow(/got no condition/u);
      tf.dispose([x, nulls, enFr, base, byDefault, enFrByDefault]);
      peft.dispose();
    });
  });

  it('names the adapter, not "Invalid config", in a condition error at forward time, and says when it got a tensor', async () => {
    await withoutTensorLeaks(() => {
      const { peft } = create();
      const x = tf.randomNormal([4, 6], 0, 1, 'float32', 53);
      const unknown = thrown(() => peft.forward({ condition: { src: 'es' } }, x));
      expect(unknown).toBeInstanceOf(ConfigError);
      expect((unknown as ConfigError).field).toBe('condition.src');
      expect(unknown.message).toBe('[@lora/hyper] HyperLoRA adapter "default": condition.src must be one of "en", "fr", "de", got "es". Known factors: src (en, fr, de); tgt (en, fr, de).');
      const row = thrown(() => peft.forward({ condition: [EN_FR, EN_FR, { tgt: 'xx' }, EN_FR] }, x));
      expect(row.message).toMatch(/^\[@lora\/hyper\] HyperLoRA adapter "default": condition\[2\]\.tgt must be one of/u);
      const tensor = tf.ones([4, 2]);
      const fromTensor = thrown(() => peft.forward({ condition: tensor }, x));
      expect(fromTensor).toBeInstanceOf(ConfigError);
      expect(fromTensor.message).toBe(
        `[@lora/hyper] HyperLoRA adapter "default": condition must be an object { factor: value }, got a tf.Tensor of shape [4, 2]. Pass plain objects, e.g. { src: 'en' }.`,
      );
      expect(fromTensor.message).not.toContain('kept');
      tf.dispose([x, tensor]);
      peft.dispose();
    });
  });

  it('says what to pass when a continuous condition gets a tensor', async () => {
    await withoutTensorLeaks(() => {
      const { peft } = create(tinyConfig({ condition: { kind: 'continuous', size: 3 } }));
      const x = tf.randomNormal([2, 6]);
      const vector = tf.ones([3]);
      const error = thrown(() => peft.forward({ condition: vector }, x));
      expect(error.message).toContain('condition must be a vector of 3 numbers (an array or Float32Array), got a tf.Tensor of shape [3]');
      expect(error.message).toContain('await tensor.array()');
      tf.dispose([x, vector]);
      peft.dispose();
    });
  });
});

describe('HyperLoRA per-row condition lists', () => {
  for (const [label, list] of [
    ['one entry', [EN_FR]],
    ['two equal entries', [EN_FR, EN_FR]],
    ['five equal entries', [EN_FR, EN_FR, EN_FR, EN_FR, EN_FR]],
  ] as const) {
    it(`rejects a list of ${label} for a batch of 4 (no broadcast), generating nothing`, async () => {
      await withoutTensorLeaks(() => {
        const { peft, state } = create();
        peft.model.eval();
        const x = tf.randomNormal([4, 3, 6], 0, 1, 'float32', 54);
        const rows = state.generator.rowsGenerated;
        const error = thrown(() => peft.forward({ condition: list }, x));
        expect(error).toBeInstanceOf(ShapeError);
        expect(error.message).toContain(`HyperLoRA adapter "default" at body.layers.0.q: inputs.condition is a list of ${list.length} (one condition per batch row)`);
        expect(error.message).toContain('one condition object (not a list) for the whole batch');
        expect(state.generator.rowsGenerated).toBe(rows);
        // One object (not a list) still applies to every row; a list of 4 equal entries is the same adapter.
        const single = peft.forward({ condition: EN_FR }, x);
        const four = peft.forward({ condition: [EN_FR, EN_FR, EN_FR, EN_FR] }, x);
        expect(Array.from(four.dataSync())).toEqual(Array.from(single.dataSync()));
        tf.dispose([x, single, four]);
        peft.dispose();
      });
    });
  }

  it('rejects an empty list and a missing entry with a ConfigError', async () => {
    await withoutTensorLeaks(() => {
      for (const budget of [0, 1 << 20]) {
        const peft = AdapterModel.create(new TinyModel(1), { registry: createLoraRegistry({ plugins: [hyper({ cacheBytes: budget })] }), plugin: 'hyper', config: tinyConfig() });
        const x = tf.randomNormal([2, 6]);
        const empty = thrown(() => peft.forward({ condition: [] }, x));
        expect(empty).toBeInstanceOf(ConfigError);
        expect(empty.message).toBe(
          `[@lora/hyper] HyperLoRA adapter "default": condition must be one condition for the whole batch, or a list with one condition per batch row, got []. Pass e.g. { condition: { src: 'en' } }.`,
        );
        const hole = thrown(() => peft.forward({ condition: [EN_FR, undefined] }, x));
        expect(hole).toBeInstanceOf(ConfigError);
        expect(hole.message).toContain('condition[1] must be an object { factor: value } (one per batch row), got undefined. Pass {} for a row');
        tf.dispose(x);
        peft.dispose();
      }
    });
  });

  it('checks the list against the batch before generating under the gradient tape: a failed train() step leaks nothing and changes nothing', async () => {
    await withoutTensorLeaks(async () => {
      const { peft, state } = create();
      const x = tf.randomNormal([4, 2, 6], 0, 1, 'float32', 55);
      const target = tf.randomNormal([4, 2, 3], 0, 1, 'float32', 56);
      const weights = state.namedTensors().map(([, variable]) => Array.from(variable.dataSync()));
      const rows = state.generator.rowsGenerated;
      const before = tf.memory().numTensors;
      const conditions = [EN_FR, { src: 'fr' }, EN_FR];
      await expect(
        train({
          model: peft,
          trainData: [{ x, target }],
          steps: 2,
          lossFn: (batch) => peft.withAdapterInputs({ condition: conditions }, () => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(batch.x), batch.target))) as tf.Scalar)),
        }),
      ).rejects.toThrow(ShapeError);
      expect(tf.memory().numTensors).toBe(before);
      expect(state.generator.rowsGenerated).toBe(rows);
      expect(state.namedTensors().map(([, variable]) => Array.from(variable.dataSync()))).toEqual(weights);
      tf.dispose([x, target]);
      peft.dispose();
    });
  });

  it('keeps an enclosing pass when a nested one fails in beginForward', async () => {
    await withoutTensorLeaks(() => {
      const { peft } = create();
      peft.model.eval();
      const x = tf.randomNormal([2, 6], 0, 1, 'float32', 57);
      const [first, second] = peft.withAdapterInputs({ condition: EN_FR }, () => {
        const outer = peft.model.forward(x);
        expect(() => peft.withAdapterInputs({ condition: { src: 'xx' } }, () => peft.model.forward(x))).toThrow(ConfigError);
        return [outer, peft.model.forward(x)];
      });
      expect(Array.from(second.dataSync())).toEqual(Array.from(first.dataSync()));
      tf.dispose([x, first, second]);
      peft.dispose();
    });
  });
});
