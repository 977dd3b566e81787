// A runnable QLoRA example: quantize a frozen network's linear layers to 4-bit NF4 (double
// quantization), fine-tune a LoRA adapter on top to a new task, report the memory saved, save the
// 4-bit base in bitsandbytes' layout and the adapter in PEFT's, load both back, and finally merge into
// a float model.
// Run: node node_modules/@lora/quant/examples/quickstart.mjs (where the package is installed;
// in this repository: node packages/quant/examples/quickstart.mjs after `pnpm build`)
import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AdapterModel, createLoraRegistry, initRuntime, Linear, loadAdapterModel, lora, Module, saveAdapter, train } from '@lora/core';
import { loadQuantizedModel, memoryReport, mergeAndDequantize, quant, saveQuantizedModel } from '@lora/quant';

class Mlp extends Module {
  constructor(seed) {
    super();
    this.up = this.registerModule('up', new Linear({ inFeatures: 64, outFeatures: 256, seed }));
    this.down = this.registerModule('down', new Linear({ inFeatures: 256, outFeatures: 16, seed: seed + 1 }));
  }

  forward(x) {
    return tf.tidy(() => this.down.forward(tf.relu(this.up.forward(x))));
  }
}

await initRuntime();

// The new task: match a differently initialised teacher network.
const teacher = new Mlp(40);
const batches = Array.from({ length: 5 }, (_, i) => {
  const x = tf.randomNormal([32, 64], 0, 1, 'float32', i);
  return { x, y: teacher.forward(x) };
});
const evalBatches = batches.splice(4);

// QLoRA = the 4-bit base transform + LoRA on the same layers.
const quantOptions = { type: 'nf4', doubleQuant: true };
const registry = createLoraRegistry({ plugins: [lora({ seed: 0 }), quant(quantOptions)] });
const adapterModel = AdapterModel.create(new Mlp(1), {
  registry,
  config: { r: 8, loraAlpha: 16, targetModules: ['up', 'down'] },
  // The output head is kept in float32 by default; this toy network has none, so quantize both layers.
  transforms: ['quant'],
});
console.log(adapterModel.trainableParameters().line);

const lossFn = (batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(adapterModel.model.forward(batch.x), batch.y))));
const result = await train({ model: adapterModel.model, lossFn, trainData: batches, evalData: evalBatches, steps: 60, learningRate: 1e-2 });
const before = result.losses[0];
const after = result.evalLosses.at(-1).loss;
console.log(`training loss at step 1: ${before.toFixed(4)}; validation loss after training: ${after.toFixed(4)}`);
console.log(memoryReport(adapterModel.model).summary);

// The 4-bit base as bitsandbytes writes it, and the adapter as PEFT writes it.
const directory = await mkdtemp(path.join(tmpdir(), 'lora-quant-quickstart-'));
await saveQuantizedModel(adapterModel.model, path.join(directory, 'base-nf4'));
await saveAdapter(adapterModel, path.join(directory, 'adapter'));
const { model: base } = await loadQuantizedModel(path.join(directory, 'base-nf4'), { loadModel: () => new Mlp(99) });
const reloaded = await loadAdapterModel(base, path.join(directory, 'adapter'), { registry });
const probe = evalBatches[0].x;
const maxDifference = (a, b) => tf.tidy(() => tf.max(tf.abs(tf.sub(a.forward(probe), b.forward(probe)))).dataSync()[0]);
const reloadDifference = maxDifference(adapterModel.model, reloaded.model);
console.log(`saved to ${directory}; reloaded outputs differ by at most ${reloadDifference}`);

// For inference without the 4-bit layers: dequant(W4) + ΔW, exactly the function that was trained.
const trainedOutput = tf.tidy(() => reloaded.model.forward(probe));
const merged = mergeAndDequantize(reloaded);
const mergeDifference = tf.tidy(() => tf.max(tf.abs(tf.sub(merged.forward(probe), trainedOutput))).dataSync()[0]);
trainedOutput.dispose();
console.log(`merged float model differs from the 4-bit + LoRA model by at most ${mergeDifference}`);

if (!(after < before) || reloadDifference > 1e-5 || mergeDifference > 1e-4) {
  console.error('quickstart failed: the adapter did not learn, did not reload identically, or did not merge exactly');
  process.exit(1);
}
