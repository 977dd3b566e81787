import * as tf from '@tensorflow/tfjs-core';
import { Linear, Module, ModuleList } from '../src/index.js';

// Shared numeric helpers live in @lora/core/testing so every package's tests use the same ones.
export { matmul64, maxRelativeError, seededRandomValues as randomValues, transpose64 } from '../src/testing.js';

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
