import * as tf from '@tensorflow/tfjs-core';
import { Linear, Module } from '@lora/core';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Directory of the shared NF4 reference fixture. */
export const NF4_FIXTURE_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../../fixtures/reference/nf4');

export { seededNormalValues as normalSamples, maxAbsoluteError as maxAbsDifference } from '@lora/core/testing';

/** A small MLP of core Linear layers: fc1 [in→hidden], proj (Conv1D layout) [hidden→hidden], lm_head [hidden→out]. */
export class TinyMlp extends Module {
  readonly fc1: Linear;
  readonly proj: Linear;
  readonly lm_head: Linear;

  constructor(options: { inFeatures?: number; hidden?: number; outFeatures?: number; seed?: number } = {}) {
    super();
    const inFeatures = options.inFeatures ?? 24;
    const hidden = options.hidden ?? 40;
    const seed = options.seed ?? 1;
    this.fc1 = this.registerModule('fc1', new Linear({ inFeatures, outFeatures: hidden, seed }));
    this.proj = this.registerModule('proj', new Linear({ inFeatures: hidden, outFeatures: hidden, fanInFanOut: true, seed: seed + 10 }));
    this.lm_head = this.registerModule('lm_head', new Linear({ inFeatures: hidden, outFeatures: options.outFeatures ?? 6, seed: seed + 20 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.lm_head.forward(tf.tanh(this.proj.forward(tf.tanh(this.fc1.forward(x))))));
  }
}

