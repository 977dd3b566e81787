import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, entryToTensor, initRuntime, LoraError, readSafetensorsFile } from '../src/index.js';
import { loraFactorTensors, writeExportedLora, type ExportedLora } from '../src/internal.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';

let root: string;

beforeAll(async () => {
  await initRuntime({ backend: 'cpu' });
  root = await mkdtemp(path.join(tmpdir(), 'lora-export-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const config = { peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['h.0.attn'] } as const;

/** Factors with known values: A = [[1, 2, 3], [4, 5, 6]] (r × in), B = [[0.5, -1], …] (out × r). */
function exportedFactors(badValue?: number): ExportedLora {
  const loraB = [0.5, -1, 2, 0.25];
  if (badValue !== undefined) loraB[3] = badValue;
  const tensors = loraFactorTensors([{ modulePath: 'h.0.attn', loraA: tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]), loraB: tf.tensor2d(loraB, [2, 2]) }]);
  return { config, tensors };
}

describe('loraFactorTensors', () => {
  it('keys the factors as PEFT saves them and takes the tensors without copying', async () => {
    await withoutTensorLeaks(() => {
      const loraA = tf.zeros([2, 3]);
      const loraB = tf.zeros([4, 2]);
      const tensors = loraFactorTensors([{ modulePath: 'h.1.mlp.c_fc', loraA, loraB }]);
      expect([...tensors.keys()]).toEqual(['base_model.model.h.1.mlp.c_fc.lora_A.weight', 'base_model.model.h.1.mlp.c_fc.lora_B.weight']);
      expect(tensors.get('base_model.model.h.1.mlp.c_fc.lora_A.weight')).toBe(loraA);
      expect(tensors.get('base_model.model.h.1.mlp.c_fc.lora_B.weight')).toBe(loraB);
      tf.dispose([loraA, loraB]);
    });
  });
});

describe('writeExportedLora', () => {
  it('writes the config and the factors as a PEFT directory and disposes the tensors', async () => {
    const directory = path.join(root, 'good');
    await withoutTensorLeaks(async () => {
      const exported = exportedFactors();
      await writeExportedLora(exported, directory, { packageName: '@lora/test', plugin: 'test' });
      expect([...exported.tensors.values()].every((tensor) => tensor.isDisposed)).toBe(true);
    });
    expect(JSON.parse(await readFile(path.join(directory, ADAPTER_CONFIG_NAME), 'utf8'))).toEqual(config);
    const file = await readSafetensorsFile(path.join(directory, ADAPTER_WEIGHTS_NAME));
    expect(file.metadata).toEqual({ format: 'pt' });
    expect([...file.tensors.keys()].sort()).toEqual(['base_model.model.h.0.attn.lora_A.weight', 'base_model.model.h.0.attn.lora_B.weight']);
    await withoutTensorLeaks(() => {
      const loraA = entryToTensor(file.tensors.get('base_model.model.h.0.attn.lora_A.weight')!);
      const loraB = entryToTensor(file.tensors.get('base_model.model.h.0.attn.lora_B.weight')!);
      // F32 round trip: exact.
      expectTensorsClose(loraA, [1, 2, 3, 4, 5, 6], { atol: 0, rtol: 0 });
      expectTensorsClose(loraB, [0.5, -1, 2, 0.25], { atol: 0, rtol: 0 });
      expect(loraA.shape).toEqual([2, 3]);
      expect(loraB.shape).toEqual([2, 2]);
      tf.dispose([loraA, loraB]);
    });
  });

  it.each([Number.NaN, Number.POSITIVE_INFINITY])('writes nothing and names the tensor when a weight is %s', async (badValue) => {
    const directory = path.join(root, `bad-${String(badValue)}`);
    await withoutTensorLeaks(async () => {
      const exported = exportedFactors(badValue);
      const writing = writeExportedLora(exported, directory, { packageName: '@lora/test', plugin: 'test', nonFiniteCause: 'a test' });
      await expect(writing).rejects.toThrow(LoraError);
      await expect(writing).rejects.toThrow(/^\[@lora\/test\] Not exporting to .*: base_model\.model\.h\.0\.attn\.lora_B\.weight holds NaN or Infinity \(a test\)/u);
      await expect(writing).rejects.toMatchObject({ plugin: 'test' });
      expect([...exported.tensors.values()].every((tensor) => tensor.isDisposed)).toBe(true);
    });
    await expect(readdir(directory)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
