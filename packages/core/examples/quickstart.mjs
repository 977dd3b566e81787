// A runnable LoRA example on @lora/core alone: freeze a small network, add LoRA to two of its
// layers, fine-tune it to a new task, merge, save in PEFT format and load it back.
// Run: node node_modules/@lora/core/examples/quickstart.mjs (where the package is installed;
// in this repository: node packages/core/examples/quickstart.mjs after `pnpm build`)
import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  AdapterModel,
  createLoraRegistry,
  initRuntime,
  Linear,
  loadAdapterModel,
  lora,
  Module,
  saveAdapter,
  train,
} from '@lora/core';

class TwoLayerNet extends Module {
  constructor(seed) {
    super();
    this.fc1 = this.registerModule('fc1', new Linear({ inFeatures: 32, outFeatures: 64, seed }));
    this.fc2 = this.registerModule('fc2', new Linear({ inFeatures: 64, outFeatures: 8, seed: seed + 2 }));
  }

  forward(x) {
    return tf.tidy(() => this.fc2.forward(tf.relu(this.fc1.forward(x))));
  }
}

const runtime = await initRuntime();
console.log(`backend: ${runtime.backend} (${runtime.reason})`);

// The "pretrained" base and a new task: match a differently initialised teacher network.
const base = new TwoLayerNet(1);
const teacher = new TwoLayerNet(50);
const batches = Array.from({ length: 16 }, (_, i) => {
  const x = tf.randomNormal([32, 32], 0, 1, 'float32', i);
  return { x, y: teacher.forward(x) };
});
const evalBatches = batches.splice(12);

const registry = createLoraRegistry({ plugins: [lora({ seed: 0 })] });
const adapterModel = AdapterModel.create(base, {
  registry,
  config: { r: 8, loraAlpha: 16, targetModules: ['fc1', 'fc2'] },
});
console.log(adapterModel.trainableParameters().line);

const lossFn = (batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(adapterModel.model.forward(batch.x), batch.y))));
const result = await train({
  model: adapterModel.model,
  lossFn,
  trainData: batches,
  evalData: evalBatches,
  steps: 300,
  learningRate: 1e-2,
  warmupSteps: 20,
  schedule: 'cosine',
  onProgress: (event) => {
    if (event.kind === 'eval' || event.step % 50 === 0) console.log(`${event.kind} step ${event.step}/${event.totalSteps} loss ${event.loss.toFixed(4)}`);
  },
});
const before = result.losses[0];
const after = result.evalLosses.at(-1).loss;
console.log(`training loss at step 1: ${before.toFixed(4)}; validation loss after training: ${after.toFixed(4)}`);

const directory = await mkdtemp(path.join(tmpdir(), 'lora-quickstart-'));
await saveAdapter(adapterModel, directory);
const reloaded = await loadAdapterModel(new TwoLayerNet(1), directory, { registry });
const probe = evalBatches[0].x;
const difference = tf.tidy(() => tf.max(tf.abs(tf.sub(adapterModel.model.forward(probe), reloaded.model.forward(probe)))).dataSync()[0]);
console.log(`saved PEFT-format adapter to ${directory}; reloaded outputs differ by at most ${difference}`);
if (!(after < before) || difference > 1e-5) {
  console.error('quickstart failed: the adapter did not learn or did not reload identically');
  process.exit(1);
}
