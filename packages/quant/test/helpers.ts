import * as tf from '@tensorflow/tfjs-core';
import { Linear, Module } from '@lora/core';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** Directory of the shared NF4 reference fixture. */
export const NF4_FIXTURE_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../../fixtures/reference/nf4');

/** Deterministic N(0, 1) float32 samples (mulberry32 + Box–Muller), independent of tfjs's RNG. */
export function normalSamples(count: number, seed: number, scale = 1): Float32Array {
  let state = seed >>> 0;
  const uniform = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const u1 = Math.max(uniform(), 1e-12);
    const u2 = uniform();
    const radius = Math.sqrt(-2 * Math.log(u1));
    out[i] = radius * Math.cos(2 * Math.PI * u2) * scale;
    if (i + 1 < count) out[i + 1] = radius * Math.sin(2 * Math.PI * u2) * scale;
  }
  return out;
}

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

/** Max |a − b| over two arrays. */
export function maxAbsDifference(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!));
  return max;
}
