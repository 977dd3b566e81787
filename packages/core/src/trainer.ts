import * as tf from '@tensorflow/tfjs-core';
import { allFiniteFlag, sumOfSquares } from './tensor-reductions.js';
import { describeValue, LoraError, TrainingError, type TrainingStopReason } from './errors.js';
import { yieldToEventLoop } from './event-loop.js';
import { fileHost } from './file-host.js';
import { faultPoint, pathExists, readSafetensorsFile, writeSafetensorsFile } from './files.js';
import { checkLoadedTensors } from './finite.js';
import {
  captureHookStates,
  checkpointedHooks,
  disposeHookStates,
  hookCheckpointEntries,
  restoreHookStates,
  restoreHooksFromFile,
  type HookStates,
  type StoredHookState,
} from './hook-checkpoint.js';
import { deriveSeed, withSeededRandom } from './random-scope.js';
import { Module } from './module.js';
import { AdamW, LEARNING_RATE_SCHEDULES, learningRateAt, type LearningRateSchedule, type OptimizerSnapshot, type TrainOptimizer } from './optimizer.js';
import type { TrainingHookCheckpoint, TrainingHooks } from './plugin.js';
import { resolveTrainingTarget, type TrainingTarget } from './training-target.js';
import { entryToTensor, tensorToEntry, type SafetensorsEntry } from './safetensors.js';

/** Batches indexed by position; an array works. Indexing keeps resumed runs on the same batches. */
export type BatchSource<Batch> =
  | readonly Batch[]
  | {
      /** Number of batches, > 0 for `trainData`; positions past the end wrap around (index modulo length). */
      readonly length: number;
      /** The batch at `index` (0 ≤ index < length); may build it on demand. */
      get(index: number): Batch;
    };

/** Emitted after every optimizer step and evaluation. */
export interface TrainingProgress {
  /** `step` after an optimizer step, `eval` after an evaluation on `evalData`. */
  readonly kind: 'step' | 'eval';
  /** Optimizer steps done (1-based). */
  readonly step: number;
  /** The run's `steps` option: the step training ends at. */
  readonly totalSteps: number;
  /** Mean training loss of this step (kind `step`) or evaluation loss (kind `eval`). */
  readonly loss: number;
  /** The learning rate of the step just done, after warm-up and schedule. */
  readonly learningRate: number;
  /** Wall-clock milliseconds since this `train()` call started (a resumed run counts from its own start). */
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
  /**
   * Training batches (at least one). Optimizer step k (0-based) uses batches k·a … k·a + a − 1, with a =
   * `gradientAccumulationSteps`, wrapping around past the end; there is no shuffling.
   */
  readonly trainData: BatchSource<Batch>;
  /** Optimizer steps to run in total (a resumed run continues up to this number). */
  readonly steps: number;
  /** Peak learning rate (default 1e-3). */
  readonly learningRate?: number;
  /** AdamW decoupled weight decay (default 0). */
  readonly weightDecay?: number;
  /** AdamW's first-moment decay rate, in [0, 1) (default 0.9); ignored with `optimizer`. */
  readonly beta1?: number;
  /** AdamW's second-moment decay rate, in [0, 1) (default 0.999); ignored with `optimizer`. */
  readonly beta2?: number;
  /** AdamW's denominator term for stability, > 0 (default 1e-8); ignored with `optimizer`. */
  readonly epsilon?: number;
  /** Clip the global gradient norm to this (default 1.0; null disables). */
  readonly maxGradNorm?: number | null;
  /** Linear warm-up steps (default 0). */
  readonly warmupSteps?: number;
  /** After warm-up (default `constant`). */
  readonly schedule?: LearningRateSchedule;
  /** Micro-batches per optimizer step (default 1); their gradients are averaged. */
  readonly gradientAccumulationSteps?: number;
  /** Evaluation batches: their mean loss, in eval mode and without gradients, is reported as `eval` progress and in `evalLosses` (default: no evaluation). */
  readonly evalData?: BatchSource<Batch>;
  /** Evaluate every this many steps and at the end (default: only at the end). */
  readonly evalEvery?: number;
  /** Extra hooks, run after the target's own (an `AdapterModel` supplies its adapters' hooks itself). */
  readonly hooks?: readonly TrainingHooks[];
  /** Called after every optimizer step and every evaluation, e.g. to print or chart the loss. */
  readonly onProgress?: (progress: TrainingProgress) => void;
  /** Tokens in one batch, for tokens/s in progress events. */
  readonly tokensPerBatch?: number;
  /**
   * Write a resumable checkpoint every `every` steps, at the end, when stopped by `signal`, and
   * (the last good state) when training diverges, into `directory`. A checkpoint is one file
   * (`trainer_checkpoint.safetensors`: weights, optimizer state, the step and the state of hooks
   * with a `checkpoint`, such as AdaLoRA's rank allocator) replaced atomically, and only a state
   * whose loss was seen to be finite is written.
   */
  readonly checkpoint?: {
    /** The directory of `trainer_checkpoint.safetensors`, created when missing; also where a resumed run reads it. */
    readonly directory: string;
    /** Checkpoint every this many optimizer steps, a positive integer. */
    readonly every: number;
  };
  /**
   * Continue from the checkpoint in `checkpoint.directory` if there is one (default true when
   * checkpointing). The run's hooks with a `checkpoint` get their state back first; a checkpoint
   * without the state of one of them (or with state for a hook the run lacks) is refused.
   */
  readonly resume?: boolean;
  /**
   * Another optimizer (e.g. `@lora/quant`'s `AdamW8bit`); owned by the caller, not disposed here.
   * Default: an {@link AdamW} built from the options above and disposed at the end.
   */
  readonly optimizer?: TrainOptimizer;
  /**
   * Seed for random draws during steps (dropout masks): step k's draws depend only on the seed and
   * k, so a resumed run continues bit-identically (default: unseeded).
   */
  readonly seed?: number;
  /**
   * Stop at the next step boundary when aborted (Ctrl-C): the current state is checkpointed (when
   * checkpointing) and a {@link TrainingError} with reason `interrupted` is thrown.
   */
  readonly signal?: AbortSignal;
}

/** What {@link train} returns. */
export interface TrainResult {
  /** Optimizer steps done in total. */
  readonly steps: number;
  /** Mean training loss per optimizer step run in this call. */
  readonly losses: readonly number[];
  /** One entry per evaluation run in this call, in order (empty without `evalData`). */
  readonly evalLosses: readonly {
    /** Optimizer steps done when evaluated (1-based). */
    readonly step: number;
    /** Mean loss over every batch of `evalData`. */
    readonly loss: number;
  }[];
  /** The step a resumed run started from (0 for a fresh run). */
  readonly startStep: number;
  /** Step of the newest checkpoint written, or null when not checkpointing. */
  readonly checkpointStep: number | null;
}

/** The trainer's checkpoint file: weights, optimizer state, step and hook states, in one atomically replaced file. */
export const TRAINER_CHECKPOINT_NAME = 'trainer_checkpoint.safetensors';
const STATE_KEY = 'lora_trainer_state';

function batchAt<Batch>(source: BatchSource<Batch>, index: number): Batch {
  const position = index % source.length;
  return Array.isArray(source) ? (source as readonly Batch[])[position]! : (source as { get(i: number): Batch }).get(position);
}

/**
 * Each batch's loss of `lossFn` over `data`, stacked on the device ([batches]), in eval mode, without
 * gradients; the caller disposes it. One read for all batches, not one a batch.
 */
function batchLosses<Batch>(model: Module, lossFn: (batch: Batch) => tf.Scalar, data: BatchSource<Batch>): tf.Tensor1D {
  const wasTraining = model.training;
  model.eval();
  try {
    const losses: tf.Scalar[] = [];
    try {
      for (let i = 0; i < data.length; i++) {
        losses.push(
          tf.tidy(() => {
            const loss = lossFn(batchAt(data, i));
            if (loss.rank !== 0) throw new TrainingError(`[@lora/core] evaluate: lossFn must return a scalar, got a tensor of shape [${loss.shape.join(', ')}] for batch ${i}. Reduce it, e.g. with tf.mean.`);
            return loss;
          }),
        );
      }
      return losses.length === 0 ? tf.tensor1d([]) : (tf.stack(losses) as tf.Tensor1D);
    } finally {
      tf.dispose(losses);
    }
  } finally {
    model.train(wasTraining);
  }
}

// The mean of the batches' losses, summed on the host in float64 in batch order.
const meanOf = (values: ArrayLike<number>): number => {
  let total = 0;
  for (let i = 0; i < values.length; i++) total += values[i]!;
  return total / Math.max(1, values.length);
};

/**
 * Mean loss of `lossFn` over every batch of `data`, in eval mode, without gradients. Reads the
 * losses synchronously: on a GPU backend (WebGL, WebGPU) use {@link evaluateAsync}, which does not
 * stall it ({@link train}'s evaluations do so).
 * @throws {TrainingError} when `lossFn` returns something other than a scalar (nothing is left behind).
 */
export function evaluate<Batch>(model: Module, lossFn: (batch: Batch) => tf.Scalar, data: BatchSource<Batch>): number {
  const losses = batchLosses(model, lossFn, data);
  try {
    return meanOf(losses.dataSync());
  } finally {
    losses.dispose();
  }
}

/**
 * {@link evaluate}, reading the losses with `await data()`: the same value, and nothing read
 * synchronously, so a GPU backend is not stalled (and headless Chromium's WebGPU keeps its device).
 * @throws {TrainingError} as {@link evaluate} does (the promise rejects).
 */
export async function evaluateAsync<Batch>(model: Module, lossFn: (batch: Batch) => tf.Scalar, data: BatchSource<Batch>): Promise<number> {
  const losses = batchLosses(model, lossFn, data);
  try {
    return meanOf(await losses.data());
  } finally {
    losses.dispose();
  }
}

/** A scalar's value, read asynchronously (a GPU backend does not stall), then the scalar disposed. */
async function readScalar(scalar: tf.Tensor): Promise<number> {
  try {
    return (await scalar.data())[0]!;
  } finally {
    scalar.dispose();
  }
}

/** A verified training state held in memory: the weights (shared, not copied) and optimizer state. */
interface Snapshot {
  readonly step: number;
  readonly weights: tf.Tensor[];
  /** The optimizer's own in-memory snapshot (AdamW: moments shared like the weights, no read back). */
  readonly optimizerSnapshot: OptimizerSnapshot | undefined;
  /** Another optimizer's state, read through its checkpoint interface. */
  readonly optimizerState: Map<string, SafetensorsEntry> | undefined;
  readonly optimizerStep: number;
  /** The checkpointed hooks' states (tensors shared like the weights). */
  readonly hookStates: HookStates;
}

function describeStop(reason: TrainingStopReason, value: number): string {
  switch (reason) {
    case 'non-finite-loss':
      return `the loss is ${value}`;
    case 'non-finite-gradient':
      return `the global gradient norm is ${value}`;
    case 'non-finite-parameters':
      return 'the update made weights non-finite';
    default:
      return reason;
  }
}

function isBatchSource(value: unknown): boolean {
  if (Array.isArray(value)) return true;
  const source = value as { length?: unknown; get?: unknown } | null | undefined;
  return typeof source === 'object' && source !== null && Number.isInteger(source.length) && typeof source.get === 'function';
}

/**
 * The options a plain-JavaScript caller can leave out or mistype (TypeScript's types say the same):
 * a typed error saying what to pass, instead of a TypeError from deep inside the first step.
 */
function checkTrainInputs<Batch>(options: TrainOptions<Batch>): void {
  const model = options?.model as { namedTrainableVariables?: unknown } | undefined;
  if (!(model instanceof Module) && typeof model?.namedTrainableVariables !== 'function') {
    throw new TrainingError(`[@lora/core] train: model must be a Module or an AdapterModel, got ${describeValue(options?.model)}.`);
  }
  if (typeof options.lossFn !== 'function') {
    throw new TrainingError(`[@lora/core] train: lossFn must be a function from a batch to a scalar loss, got ${describeValue(options.lossFn)}. Pass e.g. (batch) => causalLmLoss(model.forward(batch), batch).`);
  }
  for (const key of ['trainData', 'evalData'] as const) {
    if (key === 'evalData' && options.evalData === undefined) continue;
    if (!isBatchSource(options[key])) {
      throw new TrainingError(`[@lora/core] train: ${key} must be an array of batches or { length, get(index) }, got ${describeValue(options[key])}.`);
    }
  }
}

/**
 * Train the model's trainable variables (only those: frozen base weights get no gradients and no
 * optimizer state) with AdamW, gradient clipping, warm-up and a schedule, gradient accumulation,
 * periodic evaluation, plugin hooks, progress events and resumable checkpoints.
 *
 * Finite or nothing: each step checks the loss, the global gradient norm and the updated weights.
 * A state counts as good once the loss computed on it is finite. A non-finite value stops training
 * before the update is kept, the weights are put back to the last good state, that state is
 * checkpointed (when checkpointing, and after at least one step), and a {@link TrainingError}
 * says at which step it stopped (`step`) and which state was kept (`keptStep`). Only good states
 * are ever checkpointed. Tensors are freed every step.
 *
 * @throws {TrainingError} on bad options, divergence (reason `non-finite-*`) or an abort (`interrupted`).
 * @example
 * const result = await train({ model, trainData: batches, steps: 100, learningRate: 1e-3,
 *   lossFn: (batch) => causalLmLoss(model.forward(batch.inputIds), batch.inputIds) });
 */
export async function train<Batch>(options: TrainOptions<Batch>): Promise<TrainResult> {
  const accumulation = options.gradientAccumulationSteps ?? 1;
  checkTrainInputs(options);
  if (!Number.isInteger(options.steps) || options.steps <= 0) {
    throw new TrainingError(`[@lora/core] train: steps must be a positive integer, got ${options.steps}.`);
  }
  if (!Number.isInteger(accumulation) || accumulation <= 0) {
    throw new TrainingError(`[@lora/core] train: gradientAccumulationSteps must be a positive integer, got ${accumulation}.`);
  }
  if (options.learningRate !== undefined && !(Number.isFinite(options.learningRate) && options.learningRate > 0)) {
    throw new TrainingError(`[@lora/core] train: learningRate must be a finite number > 0, got ${options.learningRate}. Pass e.g. 1e-3.`);
  }
  // A negative clip would flip the gradients and 0 would stop learning, both silently.
  if (options.maxGradNorm !== undefined && options.maxGradNorm !== null && !(options.maxGradNorm > 0)) {
    throw new TrainingError(`[@lora/core] train: maxGradNorm must be a number > 0 (Infinity or null: no clipping), got ${options.maxGradNorm}. Pass e.g. 1.0.`);
  }
  if (options.warmupSteps !== undefined && !(Number.isInteger(options.warmupSteps) && options.warmupSteps >= 0)) {
    throw new TrainingError(`[@lora/core] train: warmupSteps must be an integer >= 0, got ${options.warmupSteps}.`);
  }
  if (options.schedule !== undefined && !(LEARNING_RATE_SCHEDULES as readonly string[]).includes(options.schedule)) {
    throw new TrainingError(`[@lora/core] train: schedule must be one of ${LEARNING_RATE_SCHEDULES.map((name) => `'${name}'`).join(', ')}, got ${JSON.stringify(options.schedule)}.`);
  }
  if (options.checkpoint && !(Number.isInteger(options.checkpoint.every) && options.checkpoint.every > 0)) {
    throw new TrainingError(`[@lora/core] train: checkpoint.every must be a positive integer, got ${options.checkpoint.every}.`);
  }
  if (options.trainData.length === 0) throw new TrainingError('[@lora/core] train: trainData has no batches.');
  const target = resolveTrainingTarget(options.model, options.hooks);
  if (target.namedVariables().length === 0) {
    // A model an AdapterModel wraps, given itself: adapter-level variables (HyperLoRA's generator) and plugin hooks live on the AdapterModel.
    const wrapped = options.model instanceof Module && options.model.adapterInputScope !== null;
    throw new TrainingError(
      wrapped
        ? '[@lora/core] train: the model has no trainable variables of its own, and an AdapterModel wraps it: pass that as model (train({ model: adapterModel, … })), which trains its adapter-level variables and runs its plugins\' hooks too.'
        : '[@lora/core] train: the model has no trainable variables. Add an adapter or unfreeze parameters.',
    );
  }
  // These configure the AdamW train() makes; with a caller's optimizer they would be ignored, silently.
  if (options.optimizer !== undefined) {
    const ignored = (['weightDecay', 'beta1', 'beta2', 'epsilon'] as const).filter((key) => options[key] !== undefined);
    if (ignored.length > 0) {
      throw new TrainingError(`[@lora/core] train: ${ignored.join(', ')} configure the AdamW train() creates, and an optimizer was given; set ${ignored.length === 1 ? 'it' : 'them'} on that optimizer instead (e.g. new AdamW({ ${ignored[0]}: … })).`);
    }
  }
  const hooks = target.hooks;
  const checkpointed = checkpointedHooks(hooks);
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
  const maxGradNorm = options.maxGradNorm === undefined ? 1.0 : options.maxGradNorm;
  const baseLearningRate = options.learningRate ?? optimizer.learningRate;
  const checkpoint = options.checkpoint;

  const losses: number[] = [];
  const evalLosses: { step: number; loss: number }[] = [];
  let startStep = 0;
  let checkpointStep: number | null = null;
  // The newest state known to be good (its loss was finite) and whether the current state is due for a checkpoint.
  let good: Snapshot | null = null;
  let checkpointDue = false;

  // Made (or found) now, so a path that cannot hold the checkpoint fails before any step is spent.
  if (checkpoint) await makeCheckpointDirectory(checkpoint.directory);
  if (checkpoint && (options.resume ?? true)) {
    // Before the variables are listed: a hook's state may rebuild variables.
    startStep = await restoreCheckpoint(checkpoint.directory, () => target.namedVariables(), optimizer, checkpointed);
    if (startStep > 0) checkpointStep = startStep;
  }
  if (startStep > options.steps) {
    throw new TrainingError(`[@lora/core] train: the checkpoint in ${checkpoint!.directory} is at step ${startStep}, past steps = ${options.steps}.`);
  }
  const named = target.namedVariables();
  const variables = named.map(([, variable]) => variable);
  const names = new Map(named.map(([name, variable]) => [variable, name] as const));

  const snapshot = (step: number): Snapshot => {
    const optimizerSnapshot = optimizer.snapshotState?.(variables);
    return {
      step,
      weights: variables.map((variable) => tf.clone(variable)),
      optimizerSnapshot,
      optimizerState: optimizerSnapshot ? undefined : optimizer.stateEntries?.(names),
      optimizerStep: optimizer.step,
      hookStates: captureHookStates(checkpointed),
    };
  };
  const release = (state: Snapshot | null) => {
    if (!state) return;
    tf.dispose(state.weights);
    state.optimizerSnapshot?.dispose();
    disposeHookStates(state.hookStates);
  };
  const restore = (state: Snapshot) => {
    variables.forEach((variable, i) => variable.assign(state.weights[i]!));
    state.optimizerSnapshot?.restore();
    if (state.optimizerState) optimizer.loadStateEntries?.(state.optimizerState, names);
    optimizer.step = state.optimizerStep;
    restoreHookStates(checkpointed, state.hookStates, `the state after step ${state.step} kept in memory`);
  };
  const saveCheckpoint = async (step: number) => {
    if (!checkpoint) return;
    await writeCheckpoint(checkpoint.directory, named, optimizer, checkpointed, { step, seed: options.seed ?? null });
    checkpointStep = step;
  };
  // The loss of the current weights on the batch of `step` (0-based), in eval mode: a finiteness check only.
  const lossOfCurrent = (step: number): Promise<number> => evaluateAsync(target.module, options.lossFn, [batchAt(options.trainData, step * accumulation)]);
  /**
   * Put back the last good state (when the current one is not good), checkpoint it and throw.
   * `current` is the number of updates the weights reflect now.
   */
  const stop = async (reason: TrainingStopReason, atStep: number, current: number, currentIsGood: boolean, value: number): Promise<never> => {
    let kept = current;
    if (!currentIsGood && good !== null) {
      restore(good);
      kept = good.step;
    }
    const keptIsGood = currentIsGood || good !== null;
    // Step 0 has no optimizer state worth resuming, and a state never seen to be good is never written.
    if (keptIsGood && kept > startStep && kept !== checkpointStep) await saveCheckpoint(kept);
    const what =
      reason === 'interrupted'
        ? `Training interrupted before step ${atStep}`
        : `Training diverged at step ${atStep}: ${describeStop(reason, value)}`;
    const keptText = keptIsGood
      ? kept === 0
        ? 'the weights are those training started from'
        : `the weights are those after step ${kept}${checkpointStep === kept ? ', checkpointed' : ''}`
      : 'no good state was reached, the weights are unchanged';
    const advice = reason === 'interrupted' ? '' : ' Lower the learning rate or check the data.';
    throw new TrainingError(`[@lora/core] ${what}; ${keptText}.${advice}`, { step: atStep, reason, keptStep: kept, checkpointStep });
  };

  const started = Date.now();
  target.module.train();
  try {
    for (let step = startStep; step < options.steps; step++) {
      if (options.signal?.aborted) {
        const finite = step === startStep || Number.isFinite(await lossOfCurrent(step));
        await stop('interrupted', step + 1, step, finite, Number.NaN);
      }
      faultPoint('train-step', String(step + 1));
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
        // In a tidy, so a lossFn that throws leaves none of its tensors behind. A loss that is not a
        // scalar is refused only after its backward pass: tfjs keeps what each op saved for the
        // backward pass until that pass runs, so a throw inside the taped function would leak them.
        // For the same reason a lossFn (or hook) that throws after its forward pass is caught inside
        // the taped function: it returns a stand-in loss reaching one variable, whose short backward
        // pass frees what the forward pass saved, and the error is rethrown after it.
        let nonScalarShape: number[] | null = null;
        let thrown: { error: unknown } | null = null;
        const computeGradients = () =>
          tf.tidy(() =>
            tf.variableGrads(() => {
              try {
                let loss = options.lossFn(batch);
                if (loss.rank !== 0) {
                  nonScalarShape = loss.shape;
                  loss = tf.sum(loss);
                }
                for (const hook of hooks) {
                  const extra = hook.extraLoss?.({ step: step + 1 });
                  if (extra) loss = tf.add(loss, extra);
                }
                return tf.div(loss, accumulation) as tf.Scalar;
              } catch (error) {
                thrown = { error };
                return tf.mul(tf.sum(variables[0]!), 0) as tf.Scalar;
              }
            }, variables),
          );
        let computed: { value: tf.Scalar; grads: tf.NamedTensorMap };
        try {
          computed = options.seed === undefined ? computeGradients() : withSeededRandom(deriveSeed(options.seed, step, micro), computeGradients);
        } catch (error) {
          if (error instanceof Error && /Cannot find a connection between any variable and the result of the loss function/u.test(error.message)) {
            throw new TrainingError(
              '[@lora/core] train: the loss does not depend on any trainable variable. Are the adapters merged (call unmerge()) or disabled, or does lossFn run another model than the one given?',
              { cause: error },
            );
          }
          throw error;
        }
        const { value, grads } = computed;
        if (thrown !== null) {
          tf.dispose([value, ...Object.values(grads)]);
          tf.dispose(accumulated ?? []);
          throw (thrown as { error: unknown }).error;
        }
        if (nonScalarShape !== null) {
          tf.dispose([value, ...Object.values(grads)]);
          tf.dispose(accumulated ?? []);
          throw new TrainingError(`[@lora/core] train: lossFn must return a scalar, got a tensor of shape [${(nonScalarShape as number[]).join(', ')}]. Reduce it, e.g. with tf.mean.`);
        }
        let lossValue: number;
        try {
          lossValue = (await readScalar(value)) * accumulation;
        } catch (error) {
          tf.dispose([...Object.values(grads), ...(accumulated ?? [])]);
          throw error;
        }
        const ordered = variables.map((variable) => grads[variable.name] ?? tf.zerosLike(variable));
        if (accumulated === null) accumulated = ordered;
        else {
          const previous: tf.Tensor[] = accumulated;
          accumulated = previous.map((gradient, i) => tf.add(gradient, ordered[i]!));
          tf.dispose(previous);
          tf.dispose(ordered);
        }
        if (!Number.isFinite(lossValue)) {
          tf.dispose(accumulated);
          // The weights that gave this loss are not good: back to the state before the last update.
          await stop('non-finite-loss', step + 1, step, false, lossValue);
        }
        lossSum += lossValue;
      }
      let gradients = accumulated!;
      // The current weights gave a finite loss: they are the newest good state.
      release(good);
      good = snapshot(step);
      if (checkpointDue) {
        checkpointDue = false;
        try {
          await saveCheckpoint(step);
        } catch (error) {
          // A failed write (disk full, a kill in tests) must not leak this step's gradients.
          tf.dispose(gradients);
          throw error;
        }
      }
      const norm = tf.tidy(() => tf.sqrt(sumOfSquares(gradients)));
      let normValue: number;
      try {
        normValue = (await norm.data())[0]!;
      } catch (error) {
        tf.dispose([norm, ...gradients]);
        throw error;
      }
      if (!Number.isFinite(normValue)) {
        tf.dispose([norm, ...gradients]);
        await stop('non-finite-gradient', step + 1, step, true, normValue);
      }
      if (maxGradNorm !== null) {
        const clipped = tf.tidy(() => {
          const factor = tf.minimum(tf.div(maxGradNorm, tf.add(norm, 1e-6)), 1);
          return gradients.map((g) => tf.mul(g, factor));
        });
        tf.dispose(gradients);
        gradients = clipped;
      }
      norm.dispose();
      const byVariable = new Map(variables.map((variable, i) => [variable, gradients[i]!] as const));
      try {
        // Awaited in turn: a hook may read tensors asynchronously (a synchronous read stalls a GPU
        // backend, and on WebGPU may lose the device).
        for (const hook of hooks) await hook.afterBackward?.({ step: step + 1, gradients: byVariable });
        optimizer.applyGradients(byVariable);
        for (const hook of hooks) await hook.afterStep?.({ step: step + 1, gradients: byVariable });
      } finally {
        // Also when a hook throws: this step's gradients are nobody else's to free.
        tf.dispose(gradients);
      }
      const finiteWeights = (await readScalar(allFiniteFlag(variables))) === 1;
      if (!finiteWeights) await stop('non-finite-parameters', step + 1, step + 1, false, Number.NaN);

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
        const evalLoss = await evaluateAsync(target.module, options.lossFn, options.evalData);
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
      // Written once the next step has seen a finite loss on these weights.
      if (checkpoint && done % checkpoint.every === 0) checkpointDue = true;
      // Let progress output, signals and other tasks run between steps.
      await yieldToEventLoop();
    }
    if (startStep < options.steps) {
      // The final weights have had no loss computed on them yet: check one batch before calling them good.
      const finalLoss = await lossOfCurrent(options.steps);
      if (!Number.isFinite(finalLoss)) await stop('non-finite-loss', options.steps, options.steps, false, finalLoss);
      if (checkpoint && checkpointStep !== options.steps) await saveCheckpoint(options.steps);
    }
  } finally {
    release(good);
    if (ownsOptimizer) optimizer.dispose();
  }
  return { steps: options.steps, losses, evalLosses, startStep, checkpointStep };
}

/** The step and settings stored in a checkpoint beside the tensors. */
interface CheckpointState {
  readonly version: 1;
  readonly step: number;
  readonly optimizerStep: number;
  readonly parameters: readonly string[];
  readonly seed: number | null;
  /** The states of hooks with a `checkpoint`, by key (absent when written before hooks had state). */
  readonly hooks?: Readonly<Record<string, StoredHookState>>;
}

async function makeCheckpointDirectory(directory: string): Promise<void> {
  try {
    await fileHost().mkdir(directory);
  } catch (error) {
    if (error instanceof LoraError) throw error;
    const code = (error as { code?: string }).code;
    const why = code === 'EEXIST' || code === 'ENOTDIR' ? 'it (or a folder above it) is a file' : `${(error as Error).message ?? String(error)}`;
    throw new TrainingError(`[@lora/core] train: cannot use checkpoint.directory ${directory}: ${why}. Pass a directory path (it is created when missing).`, { cause: error });
  }
}

async function writeCheckpoint(
  directory: string,
  named: [string, tf.Variable][],
  optimizer: TrainOptimizer,
  hooks: readonly TrainingHookCheckpoint[],
  state: { step: number; seed: number | null },
): Promise<void> {
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, variable] of named) entries.set(`param.${name}`, tensorToEntry(variable));
  const names = new Map(named.map(([name, variable]) => [variable, name] as const));
  for (const [key, entry] of optimizer.stateEntries?.(names) ?? []) entries.set(key, entry);
  const fromHooks = hookCheckpointEntries(hooks);
  for (const [key, entry] of fromHooks.entries) entries.set(key, entry);
  const stored: CheckpointState = {
    version: 1,
    step: state.step,
    optimizerStep: optimizer.step,
    parameters: named.map(([n]) => n),
    seed: state.seed,
    hooks: fromHooks.stored,
  };
  // One file holds weights, optimizer state, step and hook states, so a kill at any point leaves the old or the new checkpoint whole.
  await writeSafetensorsFile(fileHost().join(directory, TRAINER_CHECKPOINT_NAME), entries, { format: 'lora-trainer', [STATE_KEY]: JSON.stringify(stored) });
}

function readState(file: string, metadata: Readonly<Record<string, string>>): CheckpointState {
  const text = metadata[STATE_KEY];
  let state: unknown;
  try {
    state = text === undefined ? undefined : JSON.parse(text);
  } catch {
    state = undefined;
  }
  const record = state as Partial<CheckpointState> | undefined;
  if (!record || !Number.isInteger(record.step) || !Number.isInteger(record.optimizerStep) || !Array.isArray(record.parameters)) {
    throw new TrainingError(
      `[@lora/core] ${file} has no valid ${STATE_KEY} metadata (written by another tool or an older version); delete it to start over.`,
    );
  }
  return record as CheckpointState;
}

const RESUME_FIX = 'Resume with the model and adapter config it was written for, pass resume: false to start over, or use another checkpoint.directory.';

/**
 * Load a checkpoint into the hooks, then the variables (listed after the hooks are restored, as a
 * hook may rebuild them), then the optimizer. Returns its step, or 0 when there is none.
 */
async function restoreCheckpoint(
  directory: string,
  namedVariables: () => [string, tf.Variable][],
  optimizer: TrainOptimizer,
  hooks: readonly TrainingHookCheckpoint[],
): Promise<number> {
  const file = fileHost().join(directory, TRAINER_CHECKPOINT_NAME);
  if (!(await pathExists(file))) return 0;
  const contents = await readSafetensorsFile(file);
  const state = readState(file, contents.metadata);
  // A checkpoint only ever holds good weights; a damaged one must not be trained on.
  checkLoadedTensors(contents.tensors, { file });
  restoreHooksFromFile(file, hooks, state.hooks, contents.tensors);
  const named = namedVariables();
  // Every check before the first weight changes: a refused resume leaves the model's weights as they were.
  const params = named.map(([name, variable]) => {
    const param = contents.tensors.get(`param.${name}`);
    if (!param) {
      throw new TrainingError(`[@lora/core] The checkpoint ${file} has no tensor for "${name}"; it was written for another model or adapter. ${RESUME_FIX}`);
    }
    if (!sameShape(param.shape, variable.shape)) {
      throw new TrainingError(
        `[@lora/core] The checkpoint ${file} has "${name}" of shape [${param.shape.join(', ')}], the model [${variable.shape.join(', ')}]; it was written for another model or adapter. ${RESUME_FIX}`,
      );
    }
    return param;
  });
  const names = new Map(named.map(([name, variable]) => [variable, name] as const));
  restoreOptimizerState(file, optimizer, contents.tensors, names, state.optimizerStep);
  named.forEach(([name, variable], i) => tf.tidy(() => variable.assign(entryToTensor(params[i]!, name))));
  optimizer.step = state.optimizerStep;
  return state.step;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

const OPTIMIZER_FIX =
  'Resume with the optimizer and settings it was written with (e.g. AdamW or AdamW8bit, the same blockSize), pass resume: false to start over, or use another checkpoint.directory.';

/**
 * Load the optimizer's state and check it is whole: after at least one step every variable has
 * state, so each entry this optimizer keeps must be in the file with its dtype and shape. Without
 * the check, a checkpoint of another optimizer (float AdamW resumed with an 8-bit one) or other
 * settings (another block size) restarted the moments at zero, or restored part of them, silently.
 */
function restoreOptimizerState(
  file: string,
  optimizer: TrainOptimizer,
  tensors: ReadonlyMap<string, SafetensorsEntry>,
  names: ReadonlyMap<tf.Variable, string>,
  optimizerStep: number,
): void {
  if (!optimizer.loadStateEntries) return;
  try {
    optimizer.loadStateEntries(tensors, names);
  } catch (error) {
    if (error instanceof LoraError) throw error;
    throw new TrainingError(`[@lora/core] The optimizer state in ${file} does not fit this optimizer (${(error as Error).message}). ${OPTIMIZER_FIX}`, { cause: error });
  }
  if (optimizerStep === 0 || !optimizer.stateEntries) return;
  for (const [key, entry] of optimizer.stateEntries(names)) {
    const stored = tensors.get(key);
    if (stored && stored.dtype === entry.dtype && sameShape(stored.shape, entry.shape)) continue;
    const found = stored ? `"${key}" as ${stored.dtype} [${stored.shape.join(', ')}], this optimizer ${entry.dtype} [${entry.shape.join(', ')}]` : `no optimizer state "${key}"`;
    throw new TrainingError(`[@lora/core] The checkpoint ${file} (after ${optimizerStep} optimizer steps) has ${found}: it was written by another optimizer or with other settings. ${OPTIMIZER_FIX}`);
  }
}

/**
 * Read the step stored in a trainer checkpoint directory, or null when it holds none.
 * @throws {TrainingError} when the checkpoint file is not one `train()` wrote.
 * @throws {SafetensorsError} when it is damaged.
 */
export async function readCheckpointStep(directory: string): Promise<number | null> {
  const file = fileHost().join(directory, TRAINER_CHECKPOINT_NAME);
  if (!(await pathExists(file))) return null;
  return readState(file, (await readSafetensorsFile(file)).metadata).step;
}
