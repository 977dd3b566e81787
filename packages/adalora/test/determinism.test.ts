import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, createLoraRegistry, initRuntime, Linear, Module, saveAdapter, train } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { adalora, adaLoraRankHistory } from '../src/index.js';

class Net extends Module {
  readonly fc1 = this.registerModule('fc1', new Linear({ inFeatures: 16, outFeatures: 24, seed: 1 }));
  readonly fc2 = this.registerModule('fc2', new Linear({ inFeatures: 24, outFeatures: 8, seed: 2 }));
  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.fc2.forward(tf.relu(this.fc1.forward(x))));
  }
}

/** Train a seeded AdaLoRA through its whole budget schedule; return its rank history and saved bytes. */
async function run(seed: number, directory: string): Promise<{ history: unknown; bytes: Buffer }> {
  const peft = AdapterModel.create(new Net(), {
    registry: createLoraRegistry({ plugins: [adalora({ seed })] }),
    plugin: 'adalora',
    config: { initR: 4, targetR: 1, totalStep: 30, tinit: 3, tfinal: 6, deltaT: 3, loraAlpha: 8, targetModules: ['fc1', 'fc2'] },
  });
  const x = tf.randomNormal([16, 16], 0, 1, 'float32', 3);
  const y = tf.randomNormal([16, 8], 0, 1, 'float32', 4);
  try {
    await train({
      model: peft,
      trainData: [{ x, y }],
      steps: 30,
      learningRate: 2e-2,
      lossFn: (batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(batch.x), batch.y))) as tf.Scalar),
    });
    const history = structuredClone(adaLoraRankHistory(peft));
    await saveAdapter(peft, directory);
    return { history, bytes: await readFile(path.join(directory, 'adapter_model.safetensors')) };
  } finally {
    tf.dispose([x, y]);
    peft.dispose();
  }
}

describe('adalora() determinism', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  // The README's rank table once came out different on every run: tfjs's normal generator takes seed 0 as "no seed".
  it('gives the same rank history and adapter bytes for the same seed, seed 0 included', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'adalora-determinism-'));
    try {
      await withoutTensorLeaks(async () => {
        const first = await run(0, path.join(root, 'a'));
        const again = await run(0, path.join(root, 'b'));
        expect(again.history).toEqual(first.history);
        expect(again.bytes.equals(first.bytes)).toBe(true);
      });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
