import * as tf from '@tensorflow/tfjs-core';
import { Linear, Module, ModuleList } from '../src/index.js';

/** Deterministic pseudo-random numbers (mulberry32), for float64 references. */
export function randomValues(count: number, seed: number, scale = 1): number[] {
  let state = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out.push(((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale);
  }
  return out;
}

/** Row-major matrix product in float64: a [n, k] · b [k, m]. */
export function matmul64(a: readonly number[], b: readonly number[], n: number, k: number, m: number): number[] {
  const out = new Array<number>(n * m).fill(0);
  for (let i = 0; i < n; i++) for (let p = 0; p < k; p++) {
    const value = a[i * k + p]!;
    for (let j = 0; j < m; j++) out[i * m + j]! += value * b[p * m + j]!;
  }
  return out;
}

export function transpose64(a: readonly number[], rows: number, cols: number): number[] {
  const out = new Array<number>(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = a[i * cols + j]!;
  return out;
}

export function maxRelativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let maxDiff = 0;
  let maxRef = 0;
  for (let i = 0; i < expected.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(actual[i]! - expected[i]!));
    maxRef = Math.max(maxRef, Math.abs(expected[i]!));
  }
  return maxDiff / maxRef;
}

/** A two-block transformer-shaped tree with GPT-2's module paths (Conv1D layout), for adapter tests. */
export class Gpt2ShapedTree extends Module {
  readonly transformer: Gpt2Body;
  readonly lm_head: Linear;
  readonly outputHeadPaths = ['lm_head'];

  constructor(options: { width?: number; layers?: number; vocab?: number; seed?: number } = {}) {
    super();
    const width = options.width ?? 64;
    this.transformer = this.registerModule('transformer', new Gpt2Body(width, options.layers ?? 2, options.seed ?? 1));
    this.lm_head = this.registerModule('lm_head', new Linear({ inFeatures: width, outFeatures: options.vocab ?? 17, bias: false, seed: 99 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.lm_head.forward(this.transformer.forward(x)));
  }
}

class Gpt2Body extends Module {
  readonly h: ModuleList<Gpt2Block>;

  constructor(width: number, layers: number, seed: number) {
    super();
    this.h = this.registerModule('h', new ModuleList(Array.from({ length: layers }, (_, i) => new Gpt2Block(width, seed + i * 10))));
  }

  forward(x: tf.Tensor): tf.Tensor {
    let h = x;
    for (const block of this.h) {
      const next = block.forward(h);
      if (h !== x) h.dispose();
      h = next;
    }
    return h;
  }
}

class Gpt2Block extends Module {
  readonly attn: Gpt2Attention;
  readonly mlp: Gpt2Mlp;

  constructor(width: number, seed: number) {
    super();
    this.attn = this.registerModule('attn', new Gpt2Attention(width, seed));
    this.mlp = this.registerModule('mlp', new Gpt2Mlp(width, seed + 5));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const a = tf.add(x, this.attn.forward(x));
      return tf.add(a, this.mlp.forward(a));
    });
  }
}

class Gpt2Attention extends Module {
  readonly c_attn: Linear;
  readonly c_proj: Linear;

  constructor(width: number, seed: number) {
    super();
    this.c_attn = this.registerModule('c_attn', new Linear({ inFeatures: width, outFeatures: 3 * width, fanInFanOut: true, seed }));
    this.c_proj = this.registerModule('c_proj', new Linear({ inFeatures: width, outFeatures: width, fanInFanOut: true, seed: seed + 1 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const qkv = this.c_attn.forward(x);
      const width = x.shape[x.rank - 1]!;
      const [q, k, v] = tf.split(qkv, [width, width, width], -1);
      return this.c_proj.forward(tf.mul(tf.tanh(tf.mul(q!, k!)), v!));
    });
  }
}

class Gpt2Mlp extends Module {
  readonly c_fc: Linear;
  readonly c_proj: Linear;

  constructor(width: number, seed: number) {
    super();
    this.c_fc = this.registerModule('c_fc', new Linear({ inFeatures: width, outFeatures: 4 * width, fanInFanOut: true, seed }));
    this.c_proj = this.registerModule('c_proj', new Linear({ inFeatures: 4 * width, outFeatures: width, fanInFanOut: true, seed: seed + 1 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.c_proj.forward(tf.tanh(this.c_fc.forward(x))));
  }
}
