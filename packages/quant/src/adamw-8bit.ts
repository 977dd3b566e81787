import * as tf from '@tensorflow/tfjs-core';
import { AdamW, CheckpointError, ConfigError, entryToFloat32, float32Entry, float32Moments, type MomentStore } from '@lora/core';
import { dequantizeBlockwise8bit, quantizeBlockwise8bit } from './blockwise.js';
import { DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED } from './codebooks.js';

/** Options for {@link AdamW8bit}; defaults as core's `AdamW` (PyTorch's) plus bitsandbytes' 8-bit settings. */
export interface AdamW8bitOptions {
  /** Default 1e-3. */
  readonly learningRate?: number;
  /** Default 0.9. */
  readonly beta1?: number;
  /** Default 0.999. */
  readonly beta2?: number;
  /** Default 1e-8. */
  readonly epsilon?: number;
  /** Decoupled weight decay (default 0.01). */
  readonly weightDecay?: number;
  /** Elements per quantization block of the moment estimates (default 256, as bitsandbytes ≥ 0.44). */
  readonly blockSize?: number;
  /**
   * Variables with fewer elements keep float32 moments (default 4096, bitsandbytes' `min_8bit_size`):
   * for tiny tensors the saving is negligible and 8-bit noise matters more. Pass 0 to quantize all.
   */
  readonly minQuantizedSize?: number;
}

/** Blockwise 8-bit moments of one variable: `m` in the signed dynamic map, `v` in the unsigned one, a float32 absmax per block. */
function blockwise8bitStore(variable: tf.Variable, blockSize: number): MomentStore {
  const shape = [...variable.shape];
  const blocks = Math.ceil(variable.size / blockSize);
  // Zero moments: code 127 is 0 in the signed map, code 0 is 0 in the unsigned one.
  const m = new Uint8Array(variable.size).fill(127);
  const v = new Uint8Array(variable.size);
  const mAbsmax = new Float32Array(blocks);
  const vAbsmax = new Float32Array(blocks);
  const decode = (codes: Uint8Array, absmax: Float32Array, code: Float32Array): tf.Tensor =>
    tf.tensor(dequantizeBlockwise8bit(codes, absmax, { blockSize, code }), shape, 'float32');
  return {
    read: () => ({ m: decode(m, mAbsmax, DYNAMIC_MAP_SIGNED), v: decode(v, vAbsmax, DYNAMIC_MAP_UNSIGNED) }),
    write(newM, newV) {
      quantizeBlockwise8bit(newM.dataSync() as Float32Array, { blockSize, code: DYNAMIC_MAP_SIGNED, out: m, absmaxOut: mAbsmax });
      quantizeBlockwise8bit(newV.dataSync() as Float32Array, { blockSize, code: DYNAMIC_MAP_UNSIGNED, out: v, absmaxOut: vAbsmax });
    },
    entries: (name) => [
      [`adam8_m.${name}`, { dtype: 'U8', shape: [m.length], data: m.slice() }],
      [`adam8_v.${name}`, { dtype: 'U8', shape: [v.length], data: v.slice() }],
      [`adam8_m_absmax.${name}`, float32Entry(mAbsmax, [mAbsmax.length])],
      [`adam8_v_absmax.${name}`, float32Entry(vAbsmax, [vAbsmax.length])],
    ],
    load(entries, name) {
      const savedM = entries.get(`adam8_m.${name}`);
      const savedV = entries.get(`adam8_v.${name}`);
      const savedMAbsmax = entries.get(`adam8_m_absmax.${name}`);
      const savedVAbsmax = entries.get(`adam8_v_absmax.${name}`);
      if (!savedM || !savedV || !savedMAbsmax || !savedVAbsmax) return;
      if (savedM.data.length !== m.length || savedV.data.length !== v.length) {
        throw new CheckpointError(`[@lora/quant] AdamW8bit state for "${name}" has ${savedM.data.length} codes; the variable has ${m.length}.`, {
          plugin: '@lora/quant',
          mismatched: [{ name: `adam8_m.${name}`, expected: [m.length], received: [savedM.data.length] }],
        });
      }
      m.set(savedM.data);
      v.set(savedV.data);
      mAbsmax.set(entryToFloat32(savedMAbsmax, name));
      vAbsmax.set(entryToFloat32(savedVAbsmax, name));
    },
    bytes: m.byteLength + mAbsmax.byteLength + v.byteLength + vAbsmax.byteLength,
    quantized: true,
    snapshot() {
      // The codes and absmax themselves: restoring them is exact (decoding and re-encoding would not be).
      const saved = [m.slice(), mAbsmax.slice(), v.slice(), vAbsmax.slice()] as const;
      return {
        restore() {
          m.set(saved[0]);
          mAbsmax.set(saved[1]);
          v.set(saved[2]);
          vAbsmax.set(saved[3]);
        },
        dispose() {},
      };
    },
    dispose() {},
  };
}

/**
 * AdamW whose moment estimates are stored blockwise-quantized in 8 bits (Dettmers et al., *8-bit
 * Optimizers via Block-wise Quantization*; bitsandbytes' `AdamW8bit`): `m` in the signed dynamic map,
 * `v` in the unsigned one, blocks of 256 with a float32 absmax each, i.e. 2 + 8/256 ≈ 2.03 bytes per
 * parameter instead of 8. It is core's `AdamW` (same update, validation and checkpoint handling) with
 * an 8-bit `MomentEncoding`: each step decodes a variable's moments, does the float32 AdamW
 * update and re-encodes them with fresh absmax (nearest code, no stochastic rounding). Variables under
 * `minQuantizedSize` elements keep float32 moments.
 *
 * Paged optimizers (bitsandbytes' `PagedAdamW8bit`) are not offered: they rely on CUDA unified memory
 * to evict optimizer state to host RAM under memory pressure; tfjs exposes no unified memory, and on
 * the WASM/CPU backends the state already lives in host RAM.
 *
 * @throws {ConfigError} on invalid options.
 * @example
 * const optimizer = new AdamW8bit({ learningRate: 2e-4, minQuantizedSize: 0 });
 * await train({ model: peft, optimizer, steps: 100, trainData, lossFn });
 */
export class AdamW8bit extends AdamW {
  /** Elements per 8-bit quantization block of the moment estimates (default 256). */
  readonly blockSize: number;
  /** Variables with fewer elements keep float32 moments (default 4096, bitsandbytes' `min_8bit_size`). */
  readonly minQuantizedSize: number;

  constructor(options: AdamW8bitOptions = {}) {
    const blockSize = options.blockSize ?? 256;
    const minQuantizedSize = options.minQuantizedSize ?? 4096;
    if (!Number.isInteger(blockSize) || blockSize <= 0) {
      throw new ConfigError({ plugin: '@lora/quant', field: 'blockSize', received: blockSize, expected: 'a positive integer', hint: 'Pass e.g. { blockSize: 256 }.' });
    }
    if (!Number.isInteger(minQuantizedSize) || minQuantizedSize < 0) {
      throw new ConfigError({ plugin: '@lora/quant', field: 'minQuantizedSize', received: minQuantizedSize, expected: 'a non-negative integer', hint: 'Pass e.g. { minQuantizedSize: 4096 }.' });
    }
    super({
      ...options,
      packageName: '@lora/quant',
      momentEncoding: {
        create: (variable) => (variable.size >= minQuantizedSize ? blockwise8bitStore(variable, blockSize) : float32Moments.create(variable)),
      },
    });
    this.blockSize = blockSize;
    this.minQuantizedSize = minQuantizedSize;
  }
}
