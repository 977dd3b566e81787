import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createLoraRegistry, initRuntime, loadAdapterModel, lora, readAdapterConfig } from '@lora/core';
import { maxAbsoluteError, withoutTensorLeaks } from '@lora/core/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hyperStateToLora, writeExportedLora } from '../src/index.js';
import { createHyperModel, randomizeGenerator, TinyModel, tinyConfig, withCondition } from './helpers.js';

let directory: string;

beforeAll(async () => {
  await initRuntime();
  directory = await mkdtemp(path.join(tmpdir(), 'hyper-export-'));
});

afterAll(async () => {
  await rm(directory, { recursive: true, force: true });
});

describe('hyperStateToLora', () => {
  for (const [headMode, useRslora] of [['full', false], ['basis', true], ['diag', false]] as const) {
    it(`exports a fixed condition to a plain LoRA that core loads with the same logits (${headMode}, max abs diff < 1e-5)`, async () => {
      await withoutTensorLeaks(async () => {
        const hyper = createHyperModel({ config: tinyConfig({ headMode, useRslora }) });
        randomizeGenerator(hyper.state);
        hyper.model.eval();
        const condition = { src: 'fr', tgt: 'de' };
        const x = tf.randomNormal([3, 4, 6], 0, 1, 'float32', 51);
        const expected = withCondition(hyper, condition, () => hyper.model.forward(x));
        const target = path.join(directory, headMode);
        await writeExportedLora(hyperStateToLora(hyper.state, { condition }), target);
        const json = await readAdapterConfig(target);
        expect([json.peft_type, json['r'], json['lora_alpha'], json['use_rslora']]).toEqual(['LORA', 2, 4, useRslora]);
        const loaded = await loadAdapterModel(new TinyModel(1), target, { registry: createLoraRegistry({ plugins: [lora()] }) });
        loaded.model.eval();
        const actual = loaded.model.forward(x);
        expect(maxAbsoluteError(actual.dataSync(), expected.dataSync())).toBeLessThan(1e-5);
        // The export is of this condition, not another one.
        const other = withCondition(hyper, { src: 'en', tgt: 'fr' }, () => hyper.model.forward(x));
        expect(maxAbsoluteError(actual.dataSync(), other.dataSync())).toBeGreaterThan(1e-4);
        tf.dispose([x, expected, actual, other]);
        loaded.dispose();
        hyper.dispose();
      });
    });
  }
});
