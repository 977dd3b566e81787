// A runnable DoRA example: freeze a small network, add DoRA to two of its layers, fine-tune it to a
// new task, merge for inference, save in PEFT format (LORA + use_dora) and load it back; then the
// double low-rank mode and its export to a plain LoRA.
// Run: node node_modules/@lora/dora/examples/quickstart.mjs (where the package is installed;
// in this repository: node packages/dora/examples/quickstart.mjs after `pnpm build`)
import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AdapterModel, createLoraRegistry, initRuntime, Linear, loadAdapterModel, lora, Module, saveAdapter, train } from '@lora/core';
import { dora, doubleLora, saveDoubleLoraAsLora } from '@lora/dora';

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

await initRuntime();
const teacher = new TwoLayerNet(50);
const batches = Array.from({ length: 8 }, (_, i) => {
  const x = tf.randomNormal([32, 32], 0, 1, 'float32', i);
  return { x, y: teacher.forward(x) };
});
const registry = createLoraRegistry({ plugins: [lora(), dora({ seed: 0 }), doubleLora({ seed: 0 })] });

// DoRA: PEFT's LoraConfig(use_dora=True) fields, camelCase.
const peft = AdapterModel.create(new TwoLayerNet(1), { registry, plugin: 'dora', config: { r: 8, loraAlpha: 16, targetModules: ['fc1', 'fc2'] } });
console.log(peft.trainableParameters().line); // A, B and the magnitude vectors train
const lossFn = (batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(batch.x), batch.y))));
const result = await train({ model: peft.model, lossFn, trainData: batches, steps: 150, learningRate: 1e-2 });
console.log(`DoRA loss: ${result.losses[0].toFixed(4)} → ${result.losses.at(-1).toFixed(4)}`);

const probe = batches[0].x;
const unmerged = peft.model.forward(probe);
peft.merge(); // W ← m ⊙ (W + s·B·A) / ‖W + s·B·A‖, norm cached for unmerge
const merged = peft.model.forward(probe);
peft.unmerge();
const mergeGap = tf.tidy(() => tf.max(tf.abs(tf.sub(merged, unmerged))).dataSync()[0]);

const directory = await mkdtemp(path.join(tmpdir(), 'dora-quickstart-'));
await saveAdapter(peft, directory); // adapter_config.json (peft_type LORA, use_dora true) + lora_magnitude_vector tensors
const reloaded = await loadAdapterModel(new TwoLayerNet(1), directory, { registry });
const reloadGap = tf.tidy(() => tf.max(tf.abs(tf.sub(reloaded.model.forward(probe), unmerged))).dataSync()[0]);
console.log(`merged vs unmerged: ${mergeGap.toExponential(2)}; reloaded from ${directory}: ${reloadGap.toExponential(2)}`);

// Double low-rank mode: two LoRA pairs with their own rank, alpha and dropout; exports to one LoRA of rank r1 + r2.
const double = AdapterModel.create(new TwoLayerNet(1), {
  registry,
  plugin: 'double-lora',
  config: { r1: 8, loraAlpha1: 16, r2: 2, loraAlpha2: 2, loraDropout2: 0.1, targetModules: ['fc1', 'fc2'] },
});
const doubleLoss = (batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(double.model.forward(batch.x), batch.y))));
await train({ model: double.model, lossFn: doubleLoss, trainData: batches, steps: 50, learningRate: 1e-2 });
double.model.eval();
const exported = path.join(directory, 'as-lora');
await saveDoubleLoraAsLora(double, exported); // a plain PEFT LoRA, r = 10
const plain = await loadAdapterModel(new TwoLayerNet(1), exported, { registry });
const exportGap = tf.tidy(() => tf.max(tf.abs(tf.sub(plain.model.forward(probe), double.model.forward(probe)))).dataSync()[0]);
console.log(`double low-rank exported as a rank-10 LoRA: outputs differ by ${exportGap.toExponential(2)}`);

if (!(result.losses.at(-1) < result.losses[0]) || mergeGap > 1e-4 || reloadGap > 1e-6 || exportGap > 1e-5) {
  console.error('quickstart failed');
  process.exit(1);
}
