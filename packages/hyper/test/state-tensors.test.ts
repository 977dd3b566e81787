import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError, entryToTensor, initRuntime, parseSafetensors, serializeSafetensors, tensorToEntry } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { createHyperModel, randomizeGenerator, tinyConfig, withCondition } from './helpers.js';

beforeAll(async () => {
  await initRuntime();
});

const ROWS = [{ src: 'en', tgt: 'fr' }, { src: 'de' }, { src: 'en', tgt: 'fr' }];

describe('HyperLoraState tensors', () => {
  it('saves the generator once under hyperlora.* keys and loads it into a fresh state to identical logits', async () => {
    await withoutTensorLeaks(() => {
      const saved = createHyperModel({ config: tinyConfig({ headMode: 'diag' }), seed: 1 });
      randomizeGenerator(saved.state);
      saved.model.eval();
      const x = tf.randomNormal([3, 2, 6], 0, 1, 'float32', 81);
      const expected = withCondition(saved, ROWS, () => saved.model.forward(x));
      const keys = saved.state.namedTensors().map(([key]) => key);
      expect(keys.every((key) => key.startsWith('hyperlora.'))).toBe(true);
      expect(new Set(keys).size).toBe(keys.length);
      const bytes = serializeSafetensors(new Map(saved.state.namedTensors().map(([key, variable]) => [key, tensorToEntry(variable)])));
      const loaded = createHyperModel({ config: tinyConfig({ headMode: 'diag' }), seed: 2 });
      loaded.model.eval();
      // Warm the cache first: loading must invalidate it.
      tf.dispose(withCondition(loaded, ROWS, () => loaded.model.forward(x)));
      const tensors = new Map([...parseSafetensors(bytes).tensors].map(([key, entry]) => [key, entryToTensor(entry)]));
      loaded.state.assignTensors(tensors);
      tf.dispose([...tensors.values()]);
      const actual = withCondition(loaded, ROWS, () => loaded.model.forward(x));
      expect(Array.from(actual.dataSync())).toEqual(Array.from(expected.dataSync()));
      tf.dispose([x, expected, actual]);
      saved.dispose();
      loaded.dispose();
    });
  });

  it('refuses tensors that do not fit, naming them, and changes nothing', async () => {
    await withoutTensorLeaks(() => {
      const hyper = createHyperModel();
      const named = hyper.state.namedTensors();
      const tensors = new Map(named.map(([key, variable]) => [key, tf.clone(variable)] as [string, tf.Tensor]));
      tensors.get('hyperlora.trunk.0.weight')!.dispose();
      tensors.set('hyperlora.trunk.0.weight', tf.zeros([1, 1]));
      tensors.get('hyperlora.layer_embedding.weight')!.dispose();
      tensors.delete('hyperlora.layer_embedding.weight');
      const before = tf.tidy(() => Array.from(named[0]![1].dataSync()));
      let caught: unknown;
      try {
        hyper.state.assignTensors(tensors);
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(CheckpointError);
      expect((caught as CheckpointError).missing).toEqual(['hyperlora.layer_embedding.weight']);
      expect((caught as CheckpointError).mismatched.map((item) => item.name)).toEqual(['hyperlora.trunk.0.weight']);
      expect(Array.from(named[0]![1].dataSync())).toEqual(before);
      tf.dispose([...tensors.values()]);
      hyper.dispose();
    });
  });
});
