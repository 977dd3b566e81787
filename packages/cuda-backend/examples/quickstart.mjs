// Select the fastest backend, print why (`lora doctor`), then LoRA-train a small network on it.
// Run: node node_modules/@lora/cuda-backend/examples/quickstart.mjs (where the package is installed;
// in this repository: node packages/cuda-backend/examples/quickstart.mjs after `pnpm build`)
import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, createLoraRegistry, Linear, lora, Module, train } from '@lora/core';
import { doctor } from '@lora/cuda-backend';

// Before creating any tensor: select the backend and print the report.
const report = await doctor();

class Net extends Module {
  constructor() {
    super();
    this.fc1 = this.registerModule('fc1', new Linear({ inFeatures: 256, outFeatures: 1024, seed: 1 }));
    this.fc2 = this.registerModule('fc2', new Linear({ inFeatures: 1024, outFeatures: 256, seed: 3 }));
  }

  forward(x) {
    return tf.tidy(() => this.fc2.forward(tf.relu(this.fc1.forward(x))));
  }
}

const peft = AdapterModel.create(new Net(), {
  registry: createLoraRegistry({ plugins: [lora({ seed: 5 })] }),
  config: { r: 8, loraAlpha: 16, targetModules: ['fc1', 'fc2'] },
});
const x = tf.randomNormal([512, 256], 0, 1, 'float32', 7);
const y = tf.randomNormal([512, 256], 0, 1, 'float32', 8);
const started = performance.now();
const result = await train({
  model: peft.model,
  trainData: [{ x, y }],
  steps: 20,
  learningRate: 1e-3,
  lossFn: (batch) => tf.tidy(() => tf.mean(tf.square(tf.sub(peft.model.forward(batch.x), batch.y)))),
});
console.log(
  `\n20 LoRA steps on ${report.kind} (${report.threads} thread(s)): loss ${result.losses[0].toFixed(4)} → ${result.losses.at(-1).toFixed(4)} in ${((performance.now() - started) / 1000).toFixed(1)} s`,
);
