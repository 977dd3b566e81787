import * as tf from '@tensorflow/tfjs-core';
import {
  AdamW,
  CheckpointError,
  ConfigError,
  ShapeError,
  entryToFloat32,
  float32Entry,
  float32Moments,
  type MomentStore,
  type SafetensorsEntry,
} from '@lora/core';
import { ADAMW_NUMBER_OPTIONS, checkOptionNames, PYTORCH_ADAMW_RENAMES, type OptionNames } from '@lora/core/internal';
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

  /**
   * @throws {ConfigError} on an unknown option (PyTorch's `lr`, `betas`, `eps`, … name the option to use
   * instead), an option that is not a number, or one out of range.
   */
  constructor(options: AdamW8bitOptions = {}) {
    checkOptionNames(options, OPTION_NAMES);
    const blockSize = options.blockSize ?? 256;
    const minQuantizedSize = options.minQuantizedSize ?? 4096;
    if (!Number.isInteger(blockSize) || blockSize <= 0) {
      throw new ConfigError({ plugin: '@lora/quant', field: 'blockSize', received: blockSize, expected: 'a positive integer', hint: 'Pass e.g. { blockSize: 256 }.' });
    }
    if (!Number.isInteger(minQuantizedSize) || minQuantizedSize < 0) {
      throw new ConfigError({ plugin: '@lora/quant', field: 'minQuantizedSize', received: minQuantizedSize, expected: 'a non-negative integer', hint: 'Pass e.g. { minQuantizedSize: 4096 }.' });
    }
    const { learningRate, beta1, beta2, epsilon, weightDecay } = options;
    super({
      learningRate,
      beta1,
      beta2,
      epsilon,
      weightDecay,
      packageName: '@lora/quant',
      momentEncoding: {
        create: (variable) => (variable.size >= minQuantizedSize ? blockwise8bitStore(variable, blockSize) : float32Moments.create(variable)),
      },
    });
    this.blockSize = blockSize;
    this.minQuantizedSize = minQuantizedSize;
  }

  /**
   * One AdamW update (see core's `AdamW.applyGradients`); every gradient's shape is checked against its
   * variable first, so a wrong one changes nothing (not the step, not any variable or moment).
   * @throws {ShapeError} naming the variable whose gradient has another shape.
   */
  override applyGradients(gradients: ReadonlyMap<tf.Variable, tf.Tensor>): void {
    for (const [variable, gradient] of gradients) {
      if (gradient.rank !== variable.rank || gradient.shape.some((size, i) => size !== variable.shape[i])) {
        throw new ShapeError(`[@lora/quant] AdamW8bit.applyGradients: the gradient of variable "${variable.name}" (nothing was updated)`, variable.shape, gradient.shape);
      }
    }
    super.applyGradients(gradients);
  }

  /**
   * Restore moments written by {@link AdamW8bit.stateEntries} (the trainer's resumable checkpoints).
   * Every variable's stored entries are checked against this optimizer's layout first — 8-bit codes
   * (U8, one per element) and absmax (F32, one per block of `blockSize`) for variables of at least
   * `minQuantizedSize` elements, float32 moments for smaller ones — so state written with another
   * `blockSize` or `minQuantizedSize`, or by float `AdamW`, is refused instead of being restored in part
   * or silently left at zero. A variable with no entries at all keeps its state (zero moments when new).
   * @throws {CheckpointError} naming the checkpoint key, what was expected and what was found; nothing is restored.
   */
  override loadStateEntries(entries: ReadonlyMap<string, SafetensorsEntry>, names: ReadonlyMap<tf.Variable, string>): void {
    for (const [variable, name] of names) this.checkStoredState(entries, variable, name);
    super.loadStateEntries(entries, names);
  }

  private checkStoredState(entries: ReadonlyMap<string, SafetensorsEntry>, variable: tf.Variable, name: string): void {
    const size = variable.size;
    const blocks = Math.ceil(size / this.blockSize);
    const eightBit: [string, 'U8' | 'F32', number, string][] = [
      [`adam8_m.${name}`, 'U8', size, `one 8-bit code per element of "${name}"`],
      [`adam8_v.${name}`, 'U8', size, `one 8-bit code per element of "${name}"`],
      [`adam8_m_absmax.${name}`, 'F32', blocks, `one absmax per block of ${this.blockSize} of the ${size} elements of "${name}"; the state was written with another blockSize`],
      [`adam8_v_absmax.${name}`, 'F32', blocks, `one absmax per block of ${this.blockSize} of the ${size} elements of "${name}"; the state was written with another blockSize`],
    ];
    const float: string[] = [`adam_m.${name}`, `adam_v.${name}`];
    const fail = (key: string, problem: string, details: { missing?: string[]; mismatched?: { name: string; expected: number[]; received: readonly number[] }[] } = {}): never => {
      throw new CheckpointError(
        `[@lora/quant] Cannot restore AdamW8bit state: checkpoint key "${key}" ${problem}. Nothing was restored; resume with the optimizer settings the checkpoint was written with (same optimizer, blockSize and minQuantizedSize), or pass resume: false to start over.`,
        { plugin: '@lora/quant', ...details },
      );
    };
    const presentEightBit = eightBit.filter(([key]) => entries.has(key)).map(([key]) => key);
    const presentFloat = float.filter((key) => entries.has(key));
    const elementsOf = (entry: SafetensorsEntry): number => entry.shape.reduce((product, dimension) => product * dimension, 1);
    if (size >= this.minQuantizedSize) {
      if (presentFloat.length > 0) {
        fail(
          presentFloat[0]!,
          `holds float32 moments (written by float AdamW, or by AdamW8bit with a larger minQuantizedSize), expected 8-bit ones: this AdamW8bit quantizes variables of at least minQuantizedSize = ${this.minQuantizedSize} elements and "${name}" has ${size}`,
        );
      }
      if (presentEightBit.length === 0) return;
      for (const [key, dtype, length, what] of eightBit) {
        const entry = entries.get(key);
        if (!entry) fail(key, `is missing while "${presentEightBit[0]}" is there (an incomplete 8-bit state)`, { missing: [key] });
        const found = elementsOf(entry!);
        if (entry!.dtype !== dtype || found !== length) {
          fail(key, `is ${entry!.dtype} with ${found} values, expected ${dtype} with ${length} (${what})`, { mismatched: [{ name: key, expected: [length], received: entry!.shape }] });
        }
      }
      return;
    }
    if (presentEightBit.length > 0) {
      fail(
        presentEightBit[0]!,
        `holds 8-bit moments (written by AdamW8bit with a smaller minQuantizedSize), expected float32 ones: this AdamW8bit keeps float32 moments for variables under minQuantizedSize = ${this.minQuantizedSize} elements and "${name}" has ${size}`,
      );
    }
    if (presentFloat.length === 0) return;
    for (const key of float) {
      const entry = entries.get(key);
      if (!entry) fail(key, `is missing while "${presentFloat[0]}" is there (an incomplete float32 state)`, { missing: [key] });
      const sameShape = entry!.shape.length === variable.rank && entry!.shape.every((dimension, i) => dimension === variable.shape[i]);
      if (!['F32', 'F16', 'BF16'].includes(entry!.dtype) || !sameShape) {
        fail(key, `is ${entry!.dtype} [${entry!.shape.join(', ')}], expected a float tensor of the shape of "${name}", [${variable.shape.join(', ')}]`, {
          mismatched: [{ name: key, expected: [...variable.shape], received: entry!.shape }],
        });
      }
    }
  }
}

// AdamW8bit's options: core AdamW's numbers and two of its own; PyTorch's and bitsandbytes' names for them.
const OPTION_NAMES: OptionNames = {
  owner: 'AdamW8bit',
  plugin: '@lora/quant',
  numbers: { ...ADAMW_NUMBER_OPTIONS, blockSize: '256', minQuantizedSize: '4096' },
  renames: { ...PYTORCH_ADAMW_RENAMES, block_size: 'blockSize', blocksize: 'blockSize', min_8bit_size: 'minQuantizedSize' },
};
