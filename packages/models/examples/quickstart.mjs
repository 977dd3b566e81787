// The README's opening example.
// Run: node node_modules/@lora/models/examples/quickstart.mjs (where the package is installed;
// in this repository: node packages/models/examples/quickstart.mjs after `pnpm build`)
import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, causalLmLoss, createLoraRegistry, initRuntime, lora, train } from '@lora/core';
import { causalLmWindows, generate, loadBundledBase } from '@lora/models';

await initRuntime();

// 1. The bundled base: a 3.3 M-parameter byte-level GPT-2 pretrained on Moby-Dick.
const { model, tokenizer } = await loadBundledBase();
const [sample] = generate(model, [tokenizer.encode('Call me Ishmael. ')], { maxNewTokens: 80, doSample: true, topK: 10, seed: 1 });
console.log(tokenizer.decode(sample));

// 2. LoRA on its attention (PEFT's default target for GPT-2 is c_attn), a few steps on new text.
const peft = AdapterModel.create(model, {
  registry: createLoraRegistry({ plugins: [lora()] }),
  config: { r: 8, loraAlpha: 16, fanInFanOut: true },
});
console.log(peft.trainableParameters().line);
const text = 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. ';
const windows = causalLmWindows(tokenizer.encode(text.repeat(8)), { contextLength: 64 });
const batches = [windows.slice(0, 4)];
const result = await train({
  model,
  steps: 10,
  learningRate: 5e-3,
  trainData: batches,
  lossFn: (batch) => tf.tidy(() => {
    const ids = tf.tensor2d(batch, undefined, 'int32');
    return causalLmLoss(model.forward(ids), ids);
  }),
});
console.log(`loss ${result.losses[0].toFixed(3)} → ${result.losses.at(-1).toFixed(3)}`);
peft.dispose();
