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
 * cos and sin tables [B, T, 1, headDim / 2] for the given positions (rows of `positions`, each of
 * length T): one angle per frequency, which transformers repeats for both halves of a head
 * (`cat(freqs, freqs)`), broadcast over the heads of q or k [B, T, heads, headDim]. Computed in
 * float64, stored as float32.
 */
export function rotaryTables(inverseFrequencies: Float64Array, positions: ArrayLike<number>, batch: number, time: number): { cos: tf.Tensor4D; sin: tf.Tensor4D } {
  const half = inverseFrequencies.length;
  const cos = new Float32Array(batch * time * half);
  const sin = new Float32Array(batch * time * half);
  for (let row = 0; row < batch * time; row++) {
    const position = positions[row]!;
    for (let i = 0; i < half; i++) {
      const angle = position * inverseFrequencies[i]!;
      cos[row * half + i] = Math.cos(angle);
      sin[row * half + i] = Math.sin(angle);
    }
  }
  return { cos: tf.tensor4d(cos, [batch, time, 1, half]), sin: tf.tensor4d(sin, [batch, time, 1, half]) };
}

/**
 * The tables of {@link rotaryTables} computed on the device from a tensor of positions ([B, T], or
 * [T] for every row), in float32 as transformers computes them (angle = position · 1/θ^(2i/d), then
 * cos and sin): for GPU backends, where reading the positions back to the host would stall.
 */
export function rotaryTablesOnDevice(inverseFrequencies: Float64Array, positionIds: tf.Tensor, batch: number, time: number): { cos: tf.Tensor4D; sin: tf.Tensor4D } {
  return tf.tidy(() => {
    const half = inverseFrequencies.length;
    const positions = tf.reshape(tf.cast(positionIds, 'float32'), [positionIds.rank === 2 ? batch : 1, time, 1, 1]);
    const angles = tf.broadcastTo(tf.mul(positions, tf.tensor4d(Float32Array.from(inverseFrequencies), [1, 1, 1, half])), [batch, time, 1, half]);
    return { cos: tf.cos(angles) as tf.Tensor4D, sin: tf.sin(angles) as tf.Tensor4D };
  });
}
