// Train an AdaLoRA adapter on a toy model with core's trainer, watch the budget move, and save it
// in PEFT's format.
// Run: node node_modules/@lora/adalora/examples/quickstart.mjs (where the package is installed;
// in this repository: node packages/adalora/examples/quickstart.mjs after `pnpm build`)
import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, createLoraRegistry, initRuntime, Linear, Module, train } from '@lora/core';
import { adalora, adaLoraRankHistory, formatRankTable, renderRankChart, renderRankSvg, saveAdaLoraAdapter } from '@lora/adalora';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

class Net extends Module {
  fc1 = this.registerModule('fc1', new Linear({ inFeatures: 32, outFeatures: 64, seed: 1 }));
  fc2 = this.registerModule('fc2', new Linear({ inFeatures: 64, outFeatures: 64, seed: 2 }));
  fc3 = this.registerModule('fc3', new Linear({ inFeatures: 64, outFeatures: 8, seed: 3 }));
  forward(x) {
    return tf.tidy(() => this.fc3.forward(tf.relu(this.fc2.forward(tf.relu(this.fc1.forward(x))))));
  }
}

await initRuntime();
const registry = createLoraRegistry({ plugins: [adalora({ seed: 0 })] });
const peft = AdapterModel.create(new Net(), {
  registry,
  plugin: 'adalora',
  // 3 modules × initR 8 = 24 triplets, pruned by importance to 3 × targetR 2 = 6 over 200 steps.
  config: { initR: 8, targetR: 2, totalStep: 200, tinit: 20, tfinal: 40, deltaT: 10, loraAlpha: 16, targetModules: ['fc1', 'fc2', 'fc3'] },
});
console.log(peft.trainableParameters().line);

const x = tf.randomNormal([64, 32], 0, 1, 'float32', 7);
const y = tf.randomNormal([64, 8], 0, 1, 'float32', 8);
const result = await train({
  model: peft, // train() runs the adapter's hooks itself: orthogonal regulariser + rank allocation after every step
  trainData: [{ x, y }],
  steps: 200,
  learningRate: 1e-2,
  lossFn: (batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(batch.x), batch.y)))),
});
console.log(`loss ${result.losses[0].toFixed(4)} → ${result.losses.at(-1).toFixed(4)}`);

const history = adaLoraRankHistory(peft);
console.log(formatRankTable(history));
console.log(renderRankChart(history));

const directory = await mkdtemp(path.join(tmpdir(), 'adalora-quickstart-'));
await saveAdaLoraAdapter(peft, directory); // pruned tensors + rank_pattern: loads in Python PEFT
await writeFile(path.join(directory, 'ranks.svg'), renderRankSvg(history));
console.log(`saved to ${directory} (adapter_config.json, adapter_model.safetensors, ranks.svg)`);
tf.dispose([x, y]);
peft.dispose();
