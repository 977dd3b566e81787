import * as tf from '@tensorflow/tfjs-core';
import { adamWUpdate } from './adamw-update.js';
import { ConfigError } from './errors.js';
import { checkOptionNames, PYTORCH_ADAMW_RENAMES } from './option-names.js';
import { entryToTensor, tensorToEntry, type SafetensorsEntry } from './safetensors.js';

/**
 * What `train()` needs from an optimizer, so another one (e.g. `@lora/quant`'s 8-bit AdamW) can
 * be passed in. The trainer sets `learningRate` before every step.
 */
export interface TrainOptimizer {
  /** Step size of the next `applyGradients`; `train()` overwrites it before every step with the scheduled rate. */
  learningRate: number;
  /** Updates applied so far (restored from checkpoints). */
  step: number;
  /** One update of every variable in `gradients` at the current `learningRate`; the caller keeps and disposes the gradient tensors. */
  applyGradients(gradients: ReadonlyMap<tf.Variable, tf.Tensor>): void;
  /** Optimizer state for a checkpoint, keyed by `<kind>.<variable name>` using `names`. */
  stateEntries?(names: ReadonlyMap<tf.Variable, string>): Map<string, SafetensorsEntry>;
  /** Restore state written by `stateEntries`. */
  loadStateEntries?(entries: ReadonlyMap<string, SafetensorsEntry>, names: ReadonlyMap<tf.Variable, string>): void;
  /**
   * Optional: an exact in-memory copy of the state (not the step) that `restore()` puts back, cheaper
   * than `stateEntries`; the trainer keeps one for the last good step. The caller disposes it.
   */
  snapshotState?(variables?: readonly tf.Variable[]): OptimizerSnapshot;
  /** Free all optimizer state (the variables it updated are not disposed). */
  dispose(): void;
}

/** A copy of an optimizer's state taken by {@link TrainOptimizer.snapshotState}. */
export interface OptimizerSnapshot {
  /** Put the state back exactly as it was when the snapshot was taken. */
  restore(): void;
  /** Free the copied state without restoring it. */
  dispose(): void;
}

/**
 * How {@link AdamW} keeps one variable's two moment estimates between steps. The update itself is
 * always the float32 AdamW formula; a store only encodes its result (float32 variables by default,
 * blockwise 8-bit codes in `@lora/quant`'s `AdamW8bit`).
 */
export interface MomentStore {
  /** The moments as float32 tensors, called inside the update's `tidy` (new tensors are freed by it). */
  read(): {
    /** First moment: the exponential average of gradients (PyTorch's `exp_avg`), shaped like the variable, not bias-corrected. */
    m: tf.Tensor;
    /** Second moment: the exponential average of squared gradients (PyTorch's `exp_avg_sq`), shaped like the variable. */
    v: tf.Tensor;
  };
  /** Keep the updated moments (the tensors belong to the update's `tidy`: copy or assign them). */
  write(m: tf.Tensor, v: tf.Tensor): void;
  /** Checkpoint entries for the variable checkpointed as `name` (keys end in `.${name}`). */
  entries(name: string): [string, SafetensorsEntry][];
  /** Restore from checkpoint entries written by `entries(name)`; absent keys leave the state as it is. */
  load(entries: ReadonlyMap<string, SafetensorsEntry>, name: string): void;
  /** Bytes of state held. */
  readonly bytes: number;
  /** Whether the store holds an encoding smaller than float32 (counted as quantized in {@link AdamW.stateBytes}). */
  readonly quantized: boolean;
  /** An exact copy of the stored moments that `restore()` writes back (no decode, no re-encode). */
  snapshot(): OptimizerSnapshot;
  /** Free the moment tensors this store holds. */
  dispose(): void;
}

/** Creates the {@link MomentStore} of each variable AdamW updates. */
export interface MomentEncoding {
  /** A new store holding zero moments for `variable` (called on its first update); AdamW disposes it. */
  create(variable: tf.Variable): MomentStore;
}

/** Float32 moments in two `tf.Variable`s, checkpointed as `adam_m.<name>` and `adam_v.<name>`: AdamW's default. */
export const float32Moments: MomentEncoding = {
  create(variable) {
    // Inside tidy so the zero tensors the variables are made from are freed.
    const { m, v } = tf.tidy(() => ({ m: tf.variable(tf.zerosLike(variable), false), v: tf.variable(tf.zerosLike(variable), false) }));
    return {
      read: () => ({ m, v }),
      write(newM, newV) {
        m.assign(newM);
        v.assign(newV);
      },
      entries: (name) => [
        [`adam_m.${name}`, tensorToEntry(m)],
        [`adam_v.${name}`, tensorToEntry(v)],
      ],
      load(entries, name) {
        const savedM = entries.get(`adam_m.${name}`);
        const savedV = entries.get(`adam_v.${name}`);
        if (!savedM || !savedV) return;
        tf.tidy(() => {
          m.assign(entryToTensor(savedM, name));
          v.assign(entryToTensor(savedV, name));
        });
      },
      bytes: (m.size + v.size) * 4,
      quantized: false,
      snapshot() {
        // tf.clone shares the data (copy on write): a snapshot costs no read back.
        const savedM = tf.clone(m);
        const savedV = tf.clone(v);
        return {
          restore() {
            m.assign(savedM);
            v.assign(savedV);
          },
          dispose() {
            tf.dispose([savedM, savedV]);
          },
        };
      },
      dispose() {
        m.dispose();
        v.dispose();
      },
    };
  },
};

/** AdamW's number options, with an example value each (PyTorch's defaults). */
export const ADAMW_NUMBER_OPTIONS: Readonly<Record<string, string>> = { learningRate: '1e-3', beta1: '0.9', beta2: '0.999', epsilon: '1e-8', weightDecay: '0.01' };

/** Options for {@link AdamW}; defaults as PyTorch's `torch.optim.AdamW`. */
export interface AdamWOptions {
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
  /** How moments are stored between steps (default {@link float32Moments}). */
  readonly momentEncoding?: MomentEncoding;
  /** Package named in option errors (default `@lora/core`). */
  readonly packageName?: string;
}

/**
 * AdamW with decoupled weight decay (Loshchilov & Hutter), bias-corrected as PyTorch's:
 * `p ← p − lr·wd·p`, then `p ← p − lr·m̂/(√v̂ + ε)`. State is one {@link MomentStore} per parameter
 * (float32 by default; `@lora/quant`'s `AdamW8bit` is this class with an 8-bit encoding), created on
 * first use, saved and restored by the trainer's checkpoints.
 *
 * @throws {ConfigError} on an invalid option, naming it.
 */
export class AdamW implements TrainOptimizer {
  /** Decay rate of the first-moment average, in [0, 1); default 0.9. */
  readonly beta1: number;
  /** Decay rate of the second-moment average, in [0, 1); default 0.999. */
  readonly beta2: number;
  /** Added to √v̂ in the denominator, for stability; > 0, default 1e-8. */
  readonly epsilon: number;
  /** Decoupled weight decay: each step multiplies weights by 1 − learningRate·weightDecay; ≥ 0, default 0.01 (0 turns it off). */
  readonly weightDecay: number;
  /** Step size of the next update, ≥ 0; default 1e-3. `train()` sets it before every step from its schedule. */
  learningRate: number;
  /** Number of updates applied. */
  step = 0;
  private readonly encoding: MomentEncoding;
  private readonly stores = new Map<tf.Variable, MomentStore>();

  constructor(options: AdamWOptions = {}) {
    // An option it does not know would be ignored, and its default run silently (PyTorch's `lr`, say).
    checkOptionNames(options, {
      owner: 'AdamW',
      plugin: options?.packageName ?? '@lora/core',
      numbers: ADAMW_NUMBER_OPTIONS,
      others: ['momentEncoding', 'packageName'],
      renames: PYTORCH_ADAMW_RENAMES,
    });
    this.learningRate = options.learningRate ?? 1e-3;
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.epsilon = options.epsilon ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0.01;
    this.encoding = options.momentEncoding ?? float32Moments;
    const plugin = options.packageName ?? '@lora/core';
    // Each is a number here (checkOptionNames refused any other type): only its range is checked.
    const check = (field: string, value: number, ok: boolean, expected: string, example: number): void => {
      if (!ok) throw new ConfigError({ plugin, field, received: value, expected, hint: `Pass e.g. { ${field}: ${example} }.` });
    };
    check('learningRate', this.learningRate, Number.isFinite(this.learningRate) && this.learningRate >= 0, 'a finite number >= 0', 1e-3);
    check('beta1', this.beta1, this.beta1 >= 0 && this.beta1 < 1, 'in [0, 1)', 0.9);
    check('beta2', this.beta2, this.beta2 >= 0 && this.beta2 < 1, 'in [0, 1)', 0.999);
    check('epsilon', this.epsilon, Number.isFinite(this.epsilon) && this.epsilon > 0, 'a finite number > 0', 1e-8);
    check('weightDecay', this.weightDecay, Number.isFinite(this.weightDecay) && this.weightDecay >= 0, 'a finite number >= 0', 0.01);
  }

  private storeFor(variable: tf.Variable): MomentStore {
    let store = this.stores.get(variable);
    if (!store) {
      store = this.encoding.create(variable);
      this.stores.set(variable, store);
    }
    return store;
  }

  /** Apply one update with `gradients` (not disposed here). */
  applyGradients(gradients: ReadonlyMap<tf.Variable, tf.Tensor>): void {
    this.step += 1;
    const correction1 = 1 - this.beta1 ** this.step;
    const correction2 = 1 - this.beta2 ** this.step;
    const stepSize = this.learningRate / correction1;
    for (const [variable, gradient] of gradients) {
      const store = this.storeFor(variable);
      tf.tidy(() => {
        const { m, v } = store.read();
        const updated = adamWUpdate(
          { param: variable, gradient, m, v },
          {
            beta1: this.beta1,
            beta2: this.beta2,
            epsilon: this.epsilon,
            stepSize,
            sqrtCorrection2: Math.sqrt(correction2),
            decay: this.weightDecay > 0 ? 1 - this.learningRate * this.weightDecay : null,
          }
        );
        store.write(updated.m, updated.v);
        variable.assign(updated.param);
      });
    }
  }

  /** The moments of `variable` as float32 copies the caller disposes (decoded when stored in 8 bits), if it has been updated. */
  momentsOf(variable: tf.Variable):
    | {
        /** First moment (PyTorch's `exp_avg`), shaped like `variable`, not bias-corrected. */
        m: tf.Tensor;
        /** Second moment (PyTorch's `exp_avg_sq`), shaped like `variable`, not bias-corrected. */
        v: tf.Tensor;
      }
    | undefined {
    const store = this.stores.get(variable);
    if (!store) return undefined;
    return tf.tidy(() => {
      const { m, v } = store.read();
      return { m: tf.clone(m), v: tf.clone(v) };
    });
  }

  /**
   * An exact copy of every variable's moments (`variables` get their zero moments first, so every
   * snapshot holds the same tensors); restoring also forgets moments created after it (they restart at zero).
   */
  snapshotState(variables: readonly tf.Variable[] = []): OptimizerSnapshot {
    for (const variable of variables) this.storeFor(variable);
    const saved = [...this.stores].map(([variable, store]) => [variable, store, store.snapshot()] as const);
    return {
      restore: () => {
        const kept = new Set(saved.map(([variable]) => variable));
        for (const [variable, store] of this.stores) {
          if (kept.has(variable)) continue;
          store.dispose();
          this.stores.delete(variable);
        }
        for (const [variable, store, snapshot] of saved) {
          this.stores.set(variable, store);
          snapshot.restore();
        }
      },
      dispose: () => {
        for (const [, , snapshot] of saved) snapshot.dispose();
      },
    };
  }

  /** Bytes of optimizer state held, split by encoding, and the number of parameters with state. */
  stateBytes(): {
    /** All bytes of moment state: `quantized` + `float32`. */
    readonly total: number;
    /** Bytes held by stores with an encoding smaller than float32 (e.g. `AdamW8bit`'s 8-bit codes and per-block absmax). */
    readonly quantized: number;
    /** Bytes held by float32 stores (8 per parameter: m and v). */
    readonly float32: number;
    /** Scalar parameters (elements, not variables) that have moment state, i.e. have been updated. */
    readonly parameters: number;
  } {
    let quantized = 0;
    let float32 = 0;
    let parameters = 0;
    for (const [variable, store] of this.stores) {
      if (store.quantized) quantized += store.bytes;
      else float32 += store.bytes;
      parameters += variable.size;
    }
    return { total: quantized + float32, quantized, float32, parameters };
  }

  stateEntries(names: ReadonlyMap<tf.Variable, string>): Map<string, SafetensorsEntry> {
    const entries = new Map<string, SafetensorsEntry>();
    for (const [variable, name] of names) for (const [key, entry] of this.stores.get(variable)?.entries(name) ?? []) entries.set(key, entry);
    return entries;
  }

  loadStateEntries(entries: ReadonlyMap<string, SafetensorsEntry>, names: ReadonlyMap<tf.Variable, string>): void {
    for (const [variable, name] of names) this.storeFor(variable).load(entries, name);
  }

  /** Free the optimizer state. */
  dispose(): void {
    for (const store of this.stores.values()) store.dispose();
    this.stores.clear();
  }
}

/** The learning-rate schedules `train` accepts (checked there: an unknown name would silently run as cosine). */
export const LEARNING_RATE_SCHEDULES = ['constant', 'linear', 'cosine'] as const;

/** Learning-rate schedule after warm-up. */
export type LearningRateSchedule = (typeof LEARNING_RATE_SCHEDULES)[number];

/**
 * The learning rate at optimizer step `step` (0-based): linear warm-up over `warmupSteps`
 * (base·(step + 1)/warmupSteps, so the first step already moves the weights, where transformers'
 * schedule gives step 0 a rate of 0), then constant, linear decay to 0, or half-cosine decay to 0
 * at `totalSteps` (as transformers' `get_linear_schedule_with_warmup` /
 * `get_cosine_schedule_with_warmup` after warm-up).
 */
export function learningRateAt(step: number, options: { baseLearningRate: number; warmupSteps: number; totalSteps: number; schedule: LearningRateSchedule }): number {
  const { baseLearningRate, warmupSteps, totalSteps, schedule } = options;
  if (step < warmupSteps) return (baseLearningRate * (step + 1)) / warmupSteps;
  if (schedule === 'constant') return baseLearningRate;
  const progress = Math.min(1, (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps));
  if (schedule === 'linear') return baseLearningRate * Math.max(0, 1 - progress);
  return baseLearningRate * 0.5 * (1 + Math.cos(Math.PI * progress));
}
