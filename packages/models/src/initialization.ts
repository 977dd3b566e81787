import * as tf from '@tensorflow/tfjs-core';
import { LayerNorm, RMSNorm, type Module } from '@lora/core';
import { normalSeed } from '@lora/core/internal';

/**
 * transformers' `_init_weights` for the models here: every weight N(0, std(path)), biases 0,
 * LayerNorm/RMSNorm weights 1. Deterministic for a seed (one derived seed per parameter).
 */
export function normalInit(model: Module, options: { seed: number; std: (path: string) => number }): void {
  const norms = new Set<tf.Variable>();
  for (const [, module] of model.namedModules()) {
    if (module instanceof LayerNorm || module instanceof RMSNorm) norms.add(module.weight);
  }
  let index = 0;
  for (const [path, variable] of model.namedParameters()) {
    index += 1;
    tf.tidy(() => {
      if (norms.has(variable)) variable.assign(tf.onesLike(variable));
      else if (path.endsWith('bias')) variable.assign(tf.zerosLike(variable));
      else variable.assign(tf.randomNormal(variable.shape, 0, options.std(path), 'float32', normalSeed(options.seed * 100_003 + index)));
    });
  }
}
