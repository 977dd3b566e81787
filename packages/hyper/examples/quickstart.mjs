// HyperLoRA quickstart: one generator, per-row conditions, save, export one condition as a plain LoRA.
// Run: node node_modules/@lora/hyper/examples/quickstart.mjs (where the package is installed;
// in this repository: node packages/hyper/examples/quickstart.mjs after `pnpm build`)
import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AdapterModel, createLoraRegistry, initRuntime, Linear, loadAdapterModel, lora, Module, saveAdapter, train } from '@lora/core';
import { hyper, saveHyperLoraAsLora } from '@lora/hyper';

class Net extends Module {
  constructor() {
    super();
    this.fc1 = this.registerModule('fc1', new Linear({ inFeatures: 32, outFeatures: 64, seed: 1 }));
    this.fc2 = this.registerModule('fc2', new Linear({ inFeatures: 64, outFeatures: 8, seed: 3 }));
  }
  forward(x) {
    return tf.tidy(() => this.fc2.forward(tf.relu(this.fc1.forward(x))));
  }
}

await initRuntime();
const registry = createLoraRegistry({ plugins: [lora(), hyper({ seed: 1 })] });
const model = new Net();
const peft = AdapterModel.create(model, {
  registry,
  plugin: 'hyper',
  config: {
    r: 4,
    loraAlpha: 8,
    targetModules: ['fc1', 'fc2'],
    condition: { kind: 'discrete', factors: [{ name: 'src', values: ['en', 'fr', 'de'] }, { name: 'tgt', values: ['en', 'fr', 'de'] }] },
    conditionDropout: 0.1,
  },
});
console.log(peft.trainableParameters().line);

// Each row has its own condition; a target per condition that only a conditioned adapter can fit.
const conditions = [{ src: 'en', tgt: 'fr' }, { src: 'en', tgt: 'de' }, { src: 'fr', tgt: 'en' }, { src: 'en', tgt: 'fr' }];
const x = tf.randomNormal([4, 32], 0, 1, 'float32', 5);
const y = tf.tidy(() => tf.add(peft.disableAdapters(() => model.forward(x)), tf.tile(tf.tensor2d([[1], [-1], [0.5], [1]]), [1, 8]))); // the base's output, shifted
const result = await train({
  model: peft, // an AdapterModel: its generator (adapter-level state) trains, its cache is dropped each step
  trainData: [{ x, y }],
  steps: 100,
  learningRate: 1e-2,
  lossFn: (batch) => peft.withAdapterInputs({ condition: conditions }, () => tf.tidy(() => tf.mean(tf.square(tf.sub(model.forward(batch.x), batch.y))))),
});
console.log(`loss ${result.losses[0].toFixed(4)} → ${result.losses.at(-1).toFixed(4)}`);

const directory = await mkdtemp(path.join(tmpdir(), 'hyper-quickstart-'));
model.eval();
const expected = peft.withAdapterInputs({ condition: { src: 'fr', tgt: 'de' } }, () => model.forward(x)); // an unseen combination
await saveAdapter(peft, path.join(directory, 'hyper')); // peft_type HYPERLORA, generator saved once
await saveHyperLoraAsLora(peft, path.join(directory, 'fr-de'), { condition: { src: 'fr', tgt: 'de' } }); // a plain PEFT LoRA
const plain = await loadAdapterModel(new Net(), path.join(directory, 'fr-de'), { registry });
const actual = plain.model.forward(x);
console.log(`exported fr→de LoRA vs HyperLoRA: max |diff| ${tf.max(tf.abs(tf.sub(actual, expected))).dataSync()[0].toExponential(2)}`);
tf.dispose([x, y, expected, actual]);
plain.dispose();
peft.dispose();
await rm(directory, { recursive: true, force: true });
