import * as tf from '@tensorflow/tfjs-core';
import { entryToTensor, tensorToEntry, type SafetensorsEntry } from './safetensors.js';

/**
 * What `train()` needs from an optimizer, so another one (e.g. `@lora/quant`'s 8-bit AdamW) can
 * be passed in. The trainer sets `learningRate` before every step.
 */
export interface TrainOptimizer {
  learningRate: number;
  /** Updates applied so far (restored from checkpoints). */
  step: number;
  applyGradients(gradients: ReadonlyMap<tf.Variable, tf.Tensor>): void;
  /** Optimizer state for a checkpoint, keyed by `<kind>.<variable name>` using `names`. */
  stateEntries?(names: ReadonlyMap<tf.Variable, string>): Map<string, SafetensorsEntry>;
  /** Restore state written by `stateEntries`. */
  loadStateEntries?(entries: ReadonlyMap<string, SafetensorsEntry>, names: ReadonlyMap<tf.Variable, string>): void;
  dispose(): void;
}

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
}

/**
 * AdamW with decoupled weight decay (Loshchilov & Hutter), bias-corrected as PyTorch's:
 * `p ← p − lr·wd·p`, then `p ← p − lr·m̂/(√v̂ + ε)`. State is one pair of moment variables per
 * parameter, created on first use, saved and restored by the trainer's checkpoints.
 */
export class AdamW implements TrainOptimizer {
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;
  readonly weightDecay: number;
  learningRate: number;
  /** Number of updates applied. */
  step = 0;
  private readonly moments = new Map<tf.Variable, { m: tf.Variable; v: tf.Variable }>();

  constructor(options: AdamWOptions = {}) {
    this.learningRate = options.learningRate ?? 1e-3;
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.epsilon = options.epsilon ?? 1e-8;
    this.weightDecay = options.weightDecay ?? 0.01;
  }

  private stateFor(variable: tf.Variable): { m: tf.Variable; v: tf.Variable } {
    let state = this.moments.get(variable);
    if (!state) {
      // Inside tidy so the zero tensors the variables are made from are freed.
      state = tf.tidy(() => ({
        m: tf.variable(tf.zerosLike(variable), false),
        v: tf.variable(tf.zerosLike(variable), false),
      }));
      this.moments.set(variable, state);
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
      const { m, v } = this.stateFor(variable);
      tf.tidy(() => {
        const newM = tf.add(tf.mul(m, this.beta1), tf.mul(gradient, 1 - this.beta1));
        const newV = tf.add(tf.mul(v, this.beta2), tf.mul(tf.square(gradient), 1 - this.beta2));
        m.assign(newM);
        v.assign(newV);
        const decayed = this.weightDecay > 0 ? tf.mul(variable, 1 - this.learningRate * this.weightDecay) : variable;
        const denominator = tf.add(tf.div(tf.sqrt(newV), Math.sqrt(correction2)), this.epsilon);
        variable.assign(tf.sub(decayed, tf.mul(tf.div(newM, denominator), stepSize)));
      });
    }
  }

  /** The moment tensors of `variable`, if it has been updated. */
  momentsOf(variable: tf.Variable): { m: tf.Variable; v: tf.Variable } | undefined {
    return this.moments.get(variable);
  }

  /** Restore moments (from a checkpoint). Values are copied. */
  setMoments(variable: tf.Variable, m: tf.Tensor, v: tf.Tensor): void {
    const state = this.stateFor(variable);
    state.m.assign(m);
    state.v.assign(v);
  }

  stateEntries(names: ReadonlyMap<tf.Variable, string>): Map<string, SafetensorsEntry> {
    const entries = new Map<string, SafetensorsEntry>();
    for (const [variable, name] of names) {
      const moments = this.moments.get(variable);
      if (!moments) continue;
      entries.set(`adam_m.${name}`, tensorToEntry(moments.m));
      entries.set(`adam_v.${name}`, tensorToEntry(moments.v));
    }
    return entries;
  }

  loadStateEntries(entries: ReadonlyMap<string, SafetensorsEntry>, names: ReadonlyMap<tf.Variable, string>): void {
    for (const [variable, name] of names) {
      const m = entries.get(`adam_m.${name}`);
      const v = entries.get(`adam_v.${name}`);
      if (m && v) tf.tidy(() => this.setMoments(variable, entryToTensor(m, name), entryToTensor(v, name)));
    }
  }

  /** Free the optimizer state. */
  dispose(): void {
    for (const { m, v } of this.moments.values()) {
      m.dispose();
      v.dispose();
    }
    this.moments.clear();
  }
}

/** Learning-rate schedule after warm-up. */
export type LearningRateSchedule = 'constant' | 'linear' | 'cosine';

/**
 * The learning rate at optimizer step `step` (0-based): linear warm-up from 0 over `warmupSteps`,
 * then constant, linear decay to 0, or half-cosine decay to 0 at `totalSteps` (as transformers'
 * `get_linear_schedule_with_warmup` / `get_cosine_schedule_with_warmup`).
 */
export function learningRateAt(
  step: number,
  options: { baseLearningRate: number; warmupSteps: number; totalSteps: number; schedule: LearningRateSchedule },
): number {
  const { baseLearningRate, warmupSteps, totalSteps, schedule } = options;
  if (step < warmupSteps) return (baseLearningRate * (step + 1)) / warmupSteps;
  if (schedule === 'constant') return baseLearningRate;
  const progress = Math.min(1, (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps));
  if (schedule === 'linear') return baseLearningRate * Math.max(0, 1 - progress);
  return baseLearningRate * 0.5 * (1 + Math.cos(Math.PI * progress));
}
