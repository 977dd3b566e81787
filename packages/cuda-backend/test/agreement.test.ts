import { AdapterModel, causalLmLoss, createLoraRegistry, Embedding, initRuntime, LayerNorm, Linear, lora, Module, train } from '@lora/core';
import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import { startWasmBackend, useBestBackend, useFastWasmMatMul } from '../src/index.node.js';
import { nothingInstalled } from './helpers.js';

const VOCAB = 257;
const WIDTH = 64;

/** A small GPT-2-flavoured language model: embeddings, two residual MLP blocks with Conv1D-layout Linears, tied head. */
class TinyLm extends Module {
  readonly wte: Embedding;
  readonly ln: LayerNorm;
  readonly blocks: { c_fc: Linear; c_proj: Linear }[] = [];

  constructor() {
    super();
    this.wte = this.registerModule('wte', new Embedding({ numEmbeddings: VOCAB, embeddingDim: WIDTH, seed: 1 }));
    tf.tidy(() => this.wte.weight.assign(tf.mul(this.wte.weight, 0.02)));
    this.ln = this.registerModule('ln', new LayerNorm({ dim: WIDTH }));
    for (let i = 0; i < 2; i++) {
      const block = new (class extends Module {
        readonly c_fc = this.registerModule('c_fc', new Linear({ inFeatures: WIDTH, outFeatures: 4 * WIDTH, fanInFanOut: true, seed: 10 + 4 * i }));
        readonly c_proj = this.registerModule('c_proj', new Linear({ inFeatures: 4 * WIDTH, outFeatures: WIDTH, fanInFanOut: true, seed: 12 + 4 * i }));
      })();
      this.registerModule(`block${i}`, block);
      this.blocks.push(block);
    }
  }

  forward(ids: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const [batch, time] = ids.shape as [number, number];
      let x = this.wte.forward(ids);
      for (const block of this.blocks) x = tf.add(x, block.c_proj.forward(tf.relu(block.c_fc.forward(x))));
      const logits = tf.matMul(tf.reshape(this.ln.forward(x), [batch * time, WIDTH]), this.wte.weight, false, true);
      return tf.reshape(logits, [batch, time, VOCAB]);
    });
  }
}

/** LoRA-train TinyLm for 10 steps on the active backend; returns the loss of every step. */
async function loraLosses(): Promise<number[]> {
  const model = new TinyLm();
  const adapter = AdapterModel.create(model, {
    registry: createLoraRegistry({ plugins: [lora({ seed: 5 })] }),
    config: { r: 4, loraAlpha: 8, targetModules: ['c_fc', 'c_proj'], initLoraWeights: 'gaussian' },
  });
  const batches = Array.from({ length: 2 }, (_, b) => ({
    ids: tf.tensor2d(Int32Array.from({ length: 4 * 64 }, (_, i) => (97 + ((i * (b + 3)) % 26)) % VOCAB), [4, 64], 'int32'),
  }));
  const result = await train({
    model: adapter.model,
    trainData: batches,
    steps: 10,
    learningRate: 1e-2,
    lossFn: (batch) => causalLmLoss(adapter.model.forward(batch.ids), batch.ids),
  });
  tf.dispose(batches.map((batch) => batch.ids));
  model.dispose();
  return [...result.losses];
}

describe('training on every WASM flavour', () => {
  beforeAll(async () => {
    // The threaded build under "wasm", the single-threaded one beside it, both with the fast matMuls.
    const report = await useBestBackend({ importModule: nothingInstalled, threads: 2 });
    expect(report.kind).toBe('wasm-threads');
    await startWasmBackend({ name: 'wasm-single', threads: 1 });
    useFastWasmMatMul('wasm-single');
  });

  it('reaches the same loss after 10 LoRA steps single- and multi-threaded (1e-4 relative)', async () => {
    await initRuntime({ backend: 'wasm' });
    const threaded = await loraLosses();
    await initRuntime({ backend: 'wasm-single' });
    const single = await loraLosses();
    expect(threaded[9]).toBeLessThan(threaded[0]!);
    for (let step = 0; step < 10; step++) {
      expect(Math.abs(threaded[step]! - single[step]!) / Math.abs(single[step]!)).toBeLessThanOrEqual(1e-4);
    }
  });

  it('agrees with the plain JS backend, which sums in another order (1e-3 relative)', async () => {
    await initRuntime({ backend: 'wasm' });
    const threaded = await loraLosses();
    await initRuntime({ backend: 'cpu' });
    const plain = await loraLosses();
    expect(Math.abs(threaded[9]! - plain[9]!) / Math.abs(plain[9]!)).toBeLessThanOrEqual(1e-3);
    await initRuntime({ backend: 'wasm' });
  });
});
