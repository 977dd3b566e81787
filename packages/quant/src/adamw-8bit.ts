import * as tf from '@tensorflow/tfjs-core';
import {
  CheckpointError,
  ConfigError,
  entryToFloat32,
  entryToTensor,
  float32Entry,
  tensorToEntry,
  type SafetensorsEntry,
  type TrainOptimizer,
} from '@lora/core';
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

interface QuantizedMoments {
  readonly kind: '8bit';
  readonly shape: number[];
  /** First moment: codes in the signed dynamic map, absmax per block. */
  readonly m: Uint8Array;
  readonly mAbsmax: Float32Array;
  /** Second moment: codes in the unsigned dynamic map, absmax per block. */
  readonly v: Uint8Array;
  readonly vAbsmax: Float32Array;
}

interface FloatMoments {
  readonly kind: '32bit';
  readonly m: tf.Variable;
  readonly v: tf.Variable;
}

/**
 * AdamW whose moment estimates are stored blockwise-quantized in 8 bits (Dettmers et al., *8-bit
 * Optimizers via Block-wise Quantization*; bitsandbytes' `AdamW8bit`): `m` in the signed dynamic map,
 * `v` in the unsigned one, blocks of 256 with a float32 absmax each, i.e. 2 + 8/256 ≈ 2.03 bytes per
 * parameter instead of 8. Each step dequantizes a variable's moments, does the ordinary float32 AdamW
 * update (same formula as core's `AdamW`) and re-quantizes them with fresh absmax (nearest code, no
 * stochastic rounding). Variables under `minQuantizedSize` elements keep float32 moments.
 *
 * It has the same `applyGradients(Map<Variable, Tensor>)` shape as core's `AdamW`, so it drives a
 * custom training loop. Paged optimizers (bitsandbytes' `PagedAdamW8bit`) are not offered: they rely on
 * CUDA unified memory to evict optimizer state to host RAM under memory pressure; tfjs exposes no
 * unified memory, and on the WASM/CPU backends the state already lives in host RAM.
 *
 * @throws {ConfigError} on invalid options.
 * @example
 * const optimizer = new AdamW8bit({ learningRate: 2e-4, minQuantizedSize: 0 });
 * const { grads } = tf.variableGrads(() => loss(), variables);
 * optimizer.applyGradients(new Map(variables.map((v) => [v, grads[v.name]!])));
 */
export class AdamW8bit implements TrainOptimizer {
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  readonly weightDecay: number;
  readonly blockSize: number;
  readonly minQuantizedSize: number;
  learningRate: number;
  /** Number of updates applied. */
  step = 0;
  private readonly states = new Map<tf.Variable, QuantizedMoments | FloatMoments>();

  constructor(options: AdamW8bitOptions = {}) {
    this.learningRate = options.learningRate ?? 1e-3;
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.epsilon = options.epsilon ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0.01;
    this.blockSize = options.blockSize ?? 256;
    this.minQuantizedSize = options.minQuantizedSize ?? 4096;
    const check = (field: string, value: number, ok: boolean, expected: string): void => {
      if (!ok) throw new ConfigError({ plugin: '@lora/quant', field, received: value, expected, hint: `Pass e.g. { ${field}: ${expected.includes('integer') ? 256 : 0.9} }.` });
    };
    check('learningRate', this.learningRate, Number.isFinite(this.learningRate) && this.learningRate >= 0, 'a finite number >= 0');
    check('beta1', this.beta1, this.beta1 >= 0 && this.beta1 < 1, 'in [0, 1)');
    check('beta2', this.beta2, this.beta2 >= 0 && this.beta2 < 1, 'in [0, 1)');
    check('epsilon', this.epsilon, this.epsilon > 0, '> 0');
    check('weightDecay', this.weightDecay, this.weightDecay >= 0, '>= 0');
    check('blockSize', this.blockSize, Number.isInteger(this.blockSize) && this.blockSize > 0, 'a positive integer');
    check('minQuantizedSize', this.minQuantizedSize, Number.isInteger(this.minQuantizedSize) && this.minQuantizedSize >= 0, 'a non-negative integer');
  }

  private stateFor(variable: tf.Variable): QuantizedMoments | FloatMoments {
    let state = this.states.get(variable);
    if (!state) {
      if (variable.size >= this.minQuantizedSize) {
        const blocks = Math.ceil(variable.size / this.blockSize);
        // Zero moments: code 127 is 0 in the signed map, code 0 is 0 in the unsigned one.
        state = {
          kind: '8bit',
          shape: [...variable.shape],
          m: new Uint8Array(variable.size).fill(127),
          mAbsmax: new Float32Array(blocks),
          v: new Uint8Array(variable.size),
          vAbsmax: new Float32Array(blocks),
        };
      } else {
        state = {
          kind: '32bit',
          m: tf.tidy(() => tf.variable(tf.zerosLike(variable), false)),
          v: tf.tidy(() => tf.variable(tf.zerosLike(variable), false)),
        };
      }
      this.states.set(variable, state);
    }
    return state;
  }

  /** Apply one update with `gradients` (not disposed here). */
  applyGradients(gradients: ReadonlyMap<tf.Variable, tf.Tensor>): void {
    this.step += 1;
    const correction1 = 1 - this.beta1 ** this.step;
    const correction2 = 1 - this.beta2 ** this.step;
    const stepSize = this.learningRate / correction1;
    for (const [variable, gradient] of gradients) {
      const state = this.stateFor(variable);
      tf.tidy(() => {
        const m = state.kind === '8bit' ? this.dequantized(state.m, state.mAbsmax, DYNAMIC_MAP_SIGNED, state.shape) : state.m;
        const v = state.kind === '8bit' ? this.dequantized(state.v, state.vAbsmax, DYNAMIC_MAP_UNSIGNED, state.shape) : state.v;
        const newM = tf.add(tf.mul(m, this.beta1), tf.mul(gradient, 1 - this.beta1));
        const newV = tf.add(tf.mul(v, this.beta2), tf.mul(tf.square(gradient), 1 - this.beta2));
        const decayed = this.weightDecay > 0 ? tf.mul(variable, 1 - this.learningRate * this.weightDecay) : variable;
        const denominator = tf.add(tf.div(tf.sqrt(newV), Math.sqrt(correction2)), this.epsilon);
        variable.assign(tf.sub(decayed, tf.mul(tf.div(newM, denominator), stepSize)));
        if (state.kind === '8bit') {
          const settings = { blockSize: this.blockSize };
          quantizeBlockwise8bit(newM.dataSync() as Float32Array, { ...settings, code: DYNAMIC_MAP_SIGNED, out: state.m, absmaxOut: state.mAbsmax });
          quantizeBlockwise8bit(newV.dataSync() as Float32Array, { ...settings, code: DYNAMIC_MAP_UNSIGNED, out: state.v, absmaxOut: state.vAbsmax });
        } else {
          state.m.assign(newM);
          state.v.assign(newV);
        }
      });
    }
  }

  private dequantized(codes: Uint8Array, absmax: Float32Array, code: Float32Array, shape: number[]): tf.Tensor {
    return tf.tensor(dequantizeBlockwise8bit(codes, absmax, { blockSize: this.blockSize, code }), shape, 'float32');
  }

  /** The (dequantized) moments of `variable` as new tensors the caller disposes, if it has been updated. */
  momentsOf(variable: tf.Variable): { m: tf.Tensor; v: tf.Tensor } | undefined {
    const state = this.states.get(variable);
    if (!state) return undefined;
    if (state.kind === '32bit') return { m: tf.clone(state.m), v: tf.clone(state.v) };
    return {
      m: this.dequantized(state.m, state.mAbsmax, DYNAMIC_MAP_SIGNED, state.shape),
      v: this.dequantized(state.v, state.vAbsmax, DYNAMIC_MAP_UNSIGNED, state.shape),
    };
  }

  /**
   * Bytes of optimizer state held: 8-bit codes and absmax for quantized variables, 8 bytes per element
   * for float32 ones. The two 256-entry maps are shared constants and not counted.
   */
  stateBytes(): { readonly total: number; readonly quantized: number; readonly float32: number; readonly parameters: number } {
    let quantized = 0;
    let float32 = 0;
    let parameters = 0;
    for (const state of this.states.values()) {
      if (state.kind === '8bit') {
        quantized += state.m.byteLength + state.mAbsmax.byteLength + state.v.byteLength + state.vAbsmax.byteLength;
        parameters += state.m.length;
      } else {
        float32 += (state.m.size + state.v.size) * 4;
        parameters += state.m.size;
      }
    }
    return { total: quantized + float32, quantized, float32, parameters };
  }

  /**
   * The state for core's trainer checkpoints, keyed `<kind>.<variable name>`: 8-bit moments as U8
   * codes with their float32 absmax, small tensors' float32 moments as F32.
   */
  stateEntries(names: ReadonlyMap<tf.Variable, string>): Map<string, SafetensorsEntry> {
    const entries = new Map<string, SafetensorsEntry>();
    for (const [variable, name] of names) {
      const state = this.states.get(variable);
      if (!state) continue;
      if (state.kind === '8bit') {
        entries.set(`adam8_m.${name}`, { dtype: 'U8', shape: [state.m.length], data: state.m.slice() });
        entries.set(`adam8_v.${name}`, { dtype: 'U8', shape: [state.v.length], data: state.v.slice() });
        entries.set(`adam8_m_absmax.${name}`, float32Entry(state.mAbsmax, [state.mAbsmax.length]));
        entries.set(`adam8_v_absmax.${name}`, float32Entry(state.vAbsmax, [state.vAbsmax.length]));
      } else {
        entries.set(`adam_m.${name}`, tensorToEntry(state.m));
        entries.set(`adam_v.${name}`, tensorToEntry(state.v));
      }
    }
    return entries;
  }

  /** Restore state written by {@link AdamW8bit.stateEntries}. */
  loadStateEntries(entries: ReadonlyMap<string, SafetensorsEntry>, names: ReadonlyMap<tf.Variable, string>): void {
    for (const [variable, name] of names) {
      const state = this.stateFor(variable);
      if (state.kind === '8bit') {
        const m = entries.get(`adam8_m.${name}`);
        const v = entries.get(`adam8_v.${name}`);
        const mAbsmax = entries.get(`adam8_m_absmax.${name}`);
        const vAbsmax = entries.get(`adam8_v_absmax.${name}`);
        if (!m || !v || !mAbsmax || !vAbsmax) continue;
        if (m.data.length !== state.m.length || v.data.length !== state.v.length) {
          throw new CheckpointError(`[@lora/quant] AdamW8bit state for "${name}" has ${m.data.length} codes; the variable has ${state.m.length}.`, {
            plugin: '@lora/quant',
            mismatched: [{ name: `adam8_m.${name}`, expected: [state.m.length], received: [m.data.length] }],
          });
        }
        state.m.set(m.data);
        state.v.set(v.data);
        state.mAbsmax.set(entryToFloat32(mAbsmax, name));
        state.vAbsmax.set(entryToFloat32(vAbsmax, name));
      } else {
        const m = entries.get(`adam_m.${name}`);
        const v = entries.get(`adam_v.${name}`);
        if (!m || !v) continue;
        tf.tidy(() => {
          state.m.assign(entryToTensor(m, name));
          state.v.assign(entryToTensor(v, name));
        });
      }
    }
  }

  /** Free the optimizer state. */
  dispose(): void {
    for (const state of this.states.values()) {
      if (state.kind === '32bit') {
        state.m.dispose();
        state.v.dispose();
      }
    }
    this.states.clear();
  }
}
