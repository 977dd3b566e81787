import * as tf from '@tensorflow/tfjs-core';
import type { LlamaConfig } from './llama-config.js';

/**
 * Rotary inverse frequencies 1/θ^(2i/d), i < d/2, with `rope_scaling` applied as transformers does
 * (`linear`: divided by the factor; `llama3`: the wavelength-dependent blend).
 */
export function rotaryInverseFrequencies(config: LlamaConfig): Float64Array {
  const dim = config.headDim;
  const out = new Float64Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) out[i] = 1 / config.ropeTheta ** ((2 * i) / dim);
  const scaling = config.ropeScaling;
  if (scaling?.type === 'linear') for (let i = 0; i < out.length; i++) out[i] = out[i]! / scaling.factor;
  if (scaling?.type === 'llama3') {
    const lowWavelength = scaling.originalMaxPositionEmbeddings / scaling.lowFreqFactor;
    const highWavelength = scaling.originalMaxPositionEmbeddings / scaling.highFreqFactor;
    for (let i = 0; i < out.length; i++) {
      const frequency = out[i]!;
      const wavelength = (2 * Math.PI) / frequency;
      if (wavelength < highWavelength) continue;
      if (wavelength > lowWavelength) out[i] = frequency / scaling.factor;
      else {
        const smooth = (scaling.originalMaxPositionEmbeddings / wavelength - scaling.lowFreqFactor) / (scaling.highFreqFactor - scaling.lowFreqFactor);
        out[i] = (1 - smooth) * (frequency / scaling.factor) + smooth * frequency;
      }
    }
  }
  return out;
}

/**
 * cos and sin tables [B, 1, T, headDim] for the given positions (rows of `positions`, each of
 * length T), laid out as transformers' `cat(freqs, freqs)`. Computed in float64, stored as float32.
 */
export function rotaryTables(inverseFrequencies: Float64Array, positions: ArrayLike<number>, batch: number, time: number): { cos: tf.Tensor4D; sin: tf.Tensor4D } {
  const half = inverseFrequencies.length;
  const dim = 2 * half;
  const cos = new Float32Array(batch * time * dim);
  const sin = new Float32Array(batch * time * dim);
  for (let row = 0; row < batch * time; row++) {
    const position = positions[row]!;
    for (let i = 0; i < half; i++) {
      const angle = position * inverseFrequencies[i]!;
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      cos[row * dim + i] = c;
      cos[row * dim + half + i] = c;
      sin[row * dim + i] = s;
      sin[row * dim + half + i] = s;
    }
  }
  return { cos: tf.tensor4d(cos, [batch, 1, time, dim]), sin: tf.tensor4d(sin, [batch, 1, time, dim]) };
}

/** x·cos + rotate_half(x)·sin for x [B, H, T, D], where rotate_half(x) = cat(−x₂, x₁). */
export function applyRotary(x: tf.Tensor, cos: tf.Tensor, sin: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const half = x.shape[x.rank - 1]! / 2;
    const [x1, x2] = tf.split(x, [half, half], -1) as [tf.Tensor, tf.Tensor];
    const rotated = tf.concat([tf.neg(x2), x1], -1);
    return tf.add(tf.mul(x, cos), tf.mul(rotated, sin));
  });
}
