import * as tf from '@tensorflow/tfjs-core';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { TrainingError } from './errors.js';
import { readJsonFile, readSafetensorsFile, writeJsonAtomic, writeSafetensorsFile } from './files.js';
import type { Module } from './module.js';
import { AdamW, learningRateAt, type LearningRateSchedule, type TrainOptimizer } from './optimizer.js';
import type { TrainingHooks } from './plugin.js';
import { resolveTrainingTarget, type TrainingTarget } from './training-target.js';
import { entryToTensor, tensorToEntry, type SafetensorsEntry } from './safetensors.js';

/** Batches indexed by position; an array works. Indexing keeps resumed runs on the same batches. */
export type BatchSource<Batch> = readonly Batch[] | { readonly length: number; get(index: number): Batch };

/** Emitted after every optimizer step and evaluation. */
export interface TrainingProgress {
  readonly kind: 'step' | 'eval';
  /** Optimizer steps done (1-based). */
  readonly step: number;
  readonly totalSteps: number;
  /** Mean training loss of this step (kind `step`) or evaluation loss (kind `eval`). */
  readonly loss: number;
  readonly learningRate: number;
  readonly elapsedMs: number;
  /** Estimated time left. */
  readonly etaMs: number;
  /** Tokens per second, when `tokensPerBatch` is given. */
  readonly tokensPerSecond: number | null;
}

/** Options for {@link train}. */
export interface TrainOptions<Batch> {
  /**
   * What to train: an `AdapterModel` (its trainable variables, adapter-level variables included, and
   * its active adapters' hooks, run automatically), or a plain module (its trainable variables; pass
   * plugin hooks in `hooks`). It is put in training mode (eval mode for evaluation).
   */
  readonly model: Module | TrainingTarget;
  /** Forward pass and loss for one batch. Runs inside the gradient tape; return a scalar. */
  readonly lossFn: (batch: Batch) => tf.Scalar;
  readonly trainData: BatchSource<Batch>;
  /** Optimizer steps to run in total (a resumed run continues up to this number). */
  readonly steps: number;
  /** Peak learning rate (default 1e-3). */
  readonly learningRate?: number;
  /** AdamW decoupled weight decay (default 0). */
  readonly weightDecay?: number;
  readonly beta1?: number;
  readonly beta2?: number;
  readonly epsilon?: number;
  /** Clip the global gradient norm to this (default 1.0; null disables). */
  readonly maxGradNorm?: number | null;
  /** Linear warm-up steps (default 0). */
  readonly warmupSteps?: number;
  /** After warm-up (default `constant`). */
  readonly schedule?: LearningRateSchedule;
  /** Micro-batches per optimizer step (default 1); their gradients are averaged. */
  readonly gradientAccumulationSteps?: number;
  readonly evalData?: BatchSource<Batch>;
  /** Evaluate every this many steps and at the end (default: only at the end). */
  readonly evalEvery?: number;
  /** Extra hooks, run after the target's own (an `AdapterModel` supplies its adapters' hooks itself). */
  readonly hooks?: readonly TrainingHooks[];
  readonly onProgress?: (progress: TrainingProgress) => void;
  /** Tokens in one batch, for tokens/s in progress events. */
  readonly tokensPerBatch?: number;
  /** Write a resumable checkpoint every `every` steps (and at the end) into `directory`. */
  readonly checkpoint?: { readonly directory: string; readonly every: number };
  /** Continue from the checkpoint in `checkpoint.directory` if there is one (default true when checkpointing). */
  readonly resume?: boolean;
  /**
   * Another optimizer (e.g. `@lora/quant`'s `AdamW8bit`); owned by the caller, not disposed here.
   * Default: an {@link AdamW} built from the options above and disposed at the end.
   */
  readonly optimizer?: TrainOptimizer;
}

/** What {@link train} returns. */
export interface TrainResult {
  /** Optimizer steps done in total. */
  readonly steps: number;
  /** Mean training loss per optimizer step run in this call. */
  readonly losses: readonly number[];
  readonly evalLosses: readonly { readonly step: number; readonly loss: number }[];
  /** The step a resumed run started from (0 for a fresh run). */
  readonly startStep: number;
}

const CHECKPOINT_TENSORS = 'trainer_checkpoint.safetensors';
const CHECKPOINT_STATE = 'trainer_state.json';

function batchAt<Batch>(source: BatchSource<Batch>, index: number): Batch {
  const position = index % source.length;
  return Array.isArray(source) ? (source as readonly Batch[])[position]! : (source as { get(i: number): Batch }).get(position);
}

/**
 * Mean loss of `lossFn` over every batch of `data`, in eval mode, without gradients.
 */
export function evaluate<Batch>(model: Module, lossFn: (batch: Batch) => tf.Scalar, data: BatchSource<Batch>): number {
  const wasTraining = model.training;
  model.eval();
  try {
    let total = 0;
    for (let i = 0; i < data.length; i++) {
      total += tf.tidy(() => lossFn(batchAt(data, i)).dataSync()[0]!);
    }
    return total / Math.max(1, data.length);
  } finally {
    model.train(wasTraining);
  }
}

/**
 * Train the model's trainable variables (only those: frozen base weights get no gradients and no
 * optimizer state) with AdamW, gradient clipping, warm-up and a schedule, gradient accumulation,
 * periodic evaluation, plugin hooks, progress events and resumable checkpoints.
 *
 * A non-finite loss stops training with a {@link TrainingError} naming the step; the last
 * checkpoint written is left intact. Tensors are freed every step.
 *
 * @throws {TrainingError} on bad options or a non-finite loss.
 * @example
 * const result = await train({ model, trainData: batches, steps: 100, learningRate: 1e-3,
 *   lossFn: (batch) => causalLmLoss(model.forward(batch.inputIds), batch.inputIds) });
 */
export async function train<Batch>(options: TrainOptions<Batch>): Promise<TrainResult> {
  const accumulation = options.gradientAccumulationSteps ?? 1;
  if (!Number.isInteger(options.steps) || options.steps <= 0) {
    throw new TrainingError(`[@lora/core] train: steps must be a positive integer, got ${options.steps}.`);
  }
  if (!Number.isInteger(accumulation) || accumulation <= 0) {
    throw new TrainingError(`[@lora/core] train: gradientAccumulationSteps must be a positive integer, got ${accumulation}.`);
  }
  if (options.trainData.length === 0) throw new TrainingError('[@lora/core] train: trainData has no batches.');
  const target = resolveTrainingTarget(options.model, options.hooks);
  const named = target.named;
  if (named.length === 0) {
    throw new TrainingError('[@lora/core] train: the model has no trainable variables. Add an adapter or unfreeze parameters.');
  }
  const variables = named.map(([, variable]) => variable);
  const ownsOptimizer = options.optimizer === undefined;
  const optimizer: TrainOptimizer =
    options.optimizer ??
    new AdamW({
      learningRate: options.learningRate ?? 1e-3,
      weightDecay: options.weightDecay ?? 0,
      beta1: options.beta1,
      beta2: options.beta2,
      epsilon: options.epsilon,
    });
  const hooks = target.hooks;
  const maxGradNorm = options.maxGradNorm === undefined ? 1.0 : options.maxGradNorm;
  const baseLearningRate = options.learningRate ?? optimizer.learningRate;
  let startStep = 0;
  if (options.checkpoint && (options.resume ?? true)) {
    startStep = await restoreCheckpoint(options.checkpoint.directory, named, optimizer);
  }

  const losses: number[] = [];
  const evalLosses: { step: number; loss: number }[] = [];
  const started = Date.now();
  target.module.train();
  try {
    for (let step = startStep; step < options.steps; step++) {
      optimizer.learningRate = learningRateAt(step, {
        baseLearningRate,
        warmupSteps: options.warmupSteps ?? 0,
        totalSteps: options.steps,
        schedule: options.schedule ?? 'constant',
      });
      let accumulated: tf.Tensor[] | null = null;
      let lossSum = 0;
      for (let micro = 0; micro < accumulation; micro++) {
        const batch = batchAt(options.trainData, step * accumulation + micro);
        const { value, grads } = tf.variableGrads(() => {
          let loss = options.lossFn(batch);
          for (const hook of hooks) {
            const extra = hook.extraLoss?.({ step: step + 1 });
            if (extra) loss = tf.add(loss, extra);
          }
          return tf.div(loss, accumulation) as tf.Scalar;
        }, variables);
        const lossValue = value.dataSync()[0]! * accumulation;
        value.dispose();
        if (!Number.isFinite(lossValue)) {
          tf.dispose(grads);
          if (accumulated) tf.dispose(accumulated);
          throw new TrainingError(
            `[@lora/core] Training stopped at step ${step + 1}: the loss is ${lossValue}. Lower the learning rate or check the data; the last checkpoint is intact.`,
            { step: step + 1 },
          );
        }
        lossSum += lossValue;
        const ordered = variables.map((variable) => grads[variable.name] ?? tf.zerosLike(variable));
        if (accumulated === null) accumulated = ordered;
        else {
          const previous: tf.Tensor[] = accumulated;
          accumulated = previous.map((gradient, i) => tf.add(gradient, ordered[i]!));
          tf.dispose(previous);
          tf.dispose(ordered);
        }
      }
      let gradients = accumulated!;
      if (maxGradNorm !== null) {
        const clipped = tf.tidy(() => {
          const norm = tf.sqrt(tf.addN(gradients.map((g) => tf.sum(tf.square(g)))));
          const factor = tf.minimum(tf.div(maxGradNorm, tf.add(norm, 1e-6)), 1);
          return gradients.map((g) => tf.mul(g, factor));
        });
        tf.dispose(gradients);
        gradients = clipped;
      }
      const byVariable = new Map(variables.map((variable, i) => [variable, gradients[i]!] as const));
      for (const hook of hooks) hook.afterBackward?.({ step: step + 1, gradients: byVariable });
      optimizer.applyGradients(byVariable);
      for (const hook of hooks) hook.afterStep?.({ step: step + 1, gradients: byVariable });
      tf.dispose(gradients);

      const loss = lossSum / accumulation;
      losses.push(loss);
      const done = step + 1;
      const elapsedMs = Date.now() - started;
      const perStep = elapsedMs / (done - startStep);
      const tokensPerSecond =
        options.tokensPerBatch === undefined ? null : (options.tokensPerBatch * accumulation * (done - startStep)) / Math.max(1e-3, elapsedMs / 1000);
      options.onProgress?.({
        kind: 'step',
        step: done,
        totalSteps: options.steps,
        loss,
        learningRate: optimizer.learningRate,
        elapsedMs,
        etaMs: perStep * (options.steps - done),
        tokensPerSecond,
      });
      const last = done === options.steps;
      if (options.evalData && ((options.evalEvery && done % options.evalEvery === 0) || last)) {
        const evalLoss = evaluate(target.module, options.lossFn, options.evalData);
        evalLosses.push({ step: done, loss: evalLoss });
        options.onProgress?.({
          kind: 'eval',
          step: done,
          totalSteps: options.steps,
          loss: evalLoss,
          learningRate: optimizer.learningRate,
          elapsedMs: Date.now() - started,
          etaMs: perStep * (options.steps - done),
          tokensPerSecond,
        });
      }
      if (options.checkpoint && (done % options.checkpoint.every === 0 || last)) {
        await writeCheckpoint(options.checkpoint.directory, named, optimizer, done);
      }
      // Let progress output and other tasks run between steps.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  } finally {
    if (ownsOptimizer) optimizer.dispose();
  }
  return { steps: options.steps, losses, evalLosses, startStep };
}

async function writeCheckpoint(directory: string, named: [string, tf.Variable][], optimizer: TrainOptimizer, step: number): Promise<void> {
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, variable] of named) entries.set(`param.${name}`, tensorToEntry(variable));
  const names = new Map(named.map(([name, variable]) => [variable, name] as const));
  for (const [key, entry] of optimizer.stateEntries?.(names) ?? []) entries.set(key, entry);
  await writeSafetensorsFile(path.join(directory, CHECKPOINT_TENSORS), entries, { format: 'lora-trainer' });
  await writeJsonAtomic(path.join(directory, CHECKPOINT_STATE), { step, optimizerStep: optimizer.step, parameters: named.map(([n]) => n) });
}

async function restoreCheckpoint(directory: string, named: [string, tf.Variable][], optimizer: TrainOptimizer): Promise<number> {
  try {
    await fs.access(path.join(directory, CHECKPOINT_STATE));
  } catch {
    return 0;
  }
  const state = (await readJsonFile(path.join(directory, CHECKPOINT_STATE))) as { step?: unknown; optimizerStep?: unknown };
  if (!Number.isInteger(state.step) || !Number.isInteger(state.optimizerStep)) {
    throw new TrainingError(`[@lora/core] ${path.join(directory, CHECKPOINT_STATE)} has no valid step; delete the checkpoint directory to start over.`);
  }
  const file = await readSafetensorsFile(path.join(directory, CHECKPOINT_TENSORS));
  for (const [name, variable] of named) {
    const param = file.tensors.get(`param.${name}`);
    if (!param) {
      throw new TrainingError(`[@lora/core] The checkpoint in ${directory} has no tensor for "${name}"; it was written for another model or adapter.`);
    }
    tf.tidy(() => variable.assign(entryToTensor(param, name)));
  }
  optimizer.loadStateEntries?.(file.tensors, new Map(named.map(([name, variable]) => [variable, name] as const)));
  optimizer.step = state.optimizerStep as number;
  return state.step as number;
}
