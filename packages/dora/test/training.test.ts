import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, createLoraRegistry, initRuntime, Linear, Module, train } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { dora, type DoraAdapter } from '../src/index.js';

class Net extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(seed: number) {
    super();
    this.fc1 = this.registerModule('fc1', new Linear({ inFeatures: 16, outFeatures: 24, seed }));
    this.fc2 = this.registerModule('fc2', new Linear({ inFeatures: 24, outFeatures: 4, fanInFanOut: true, seed: seed + 2 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.fc2.forward(tf.relu(this.fc1.forward(x))));
  }
}

describe('dora() with core’s trainer', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('lowers the loss, trains A, B and m only, with dropout on, and leaks no tensors', async () => {
    const teacher = new Net(40);
    const batches = Array.from({ length: 4 }, (_, i) => {
      const x = tf.randomNormal([16, 16], 0, 1, 'float32', i);
      return { x, y: teacher.forward(x) };
    });
    const registry = createLoraRegistry({ plugins: [dora({ seed: 1 })] });
    const peft = AdapterModel.create(new Net(1), { registry, plugin: 'dora', config: { r: 4, loraAlpha: 8, loraDropout: 0.05, targetModules: ['fc1', 'fc2'] } });
    peft.model.train();
    const trainable = peft.model.namedParameters().filter(([, v]) => v.trainable).map(([name]) => name);
    expect(trainable.sort()).toEqual(
      ['fc1', 'fc2'].flatMap((m) => [`${m}.lora_A.default.weight`, `${m}.lora_B.default.weight`, `${m}.lora_magnitude_vector.default`]).sort(),
    );
    const baseBefore = Array.from((peft.model.getSubmodule('fc1.base_layer') as Linear).weight.dataSync());
    const magnitudeBefore = Array.from((peft.adapterInstances('default')[0]![1] as DoraAdapter).magnitude.dataSync());
    const result = await withoutTensorLeaks(() =>
      train({
        model: peft.model,
        trainData: batches,
        steps: 40,
        learningRate: 1e-2,
        lossFn: (batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(batch.x), batch.y))) as tf.Scalar),
      }),
    );
    const first = result.losses[0]!;
    const last = result.losses[result.losses.length - 1]!;
    console.log(`DoRA training: loss ${first.toFixed(4)} → ${last.toFixed(4)}`);
    expect(last).toBeLessThan(first * 0.7);
    expect(Array.from((peft.model.getSubmodule('fc1.base_layer') as Linear).weight.dataSync())).toEqual(baseBefore);
    expect(Array.from((peft.adapterInstances('default')[0]![1] as DoraAdapter).magnitude.dataSync())).not.toEqual(magnitudeBefore);
    tf.dispose(batches.flatMap((b) => [b.x, b.y]));
    teacher.dispose();
    peft.dispose();
  });
});
