import type * as tf from '@tensorflow/tfjs-core';
import { Module } from './module.js';
import type { TrainingHooks } from './plugin.js';

/**
 * What `train()` trains: a plain {@link Module} (its trainable variables, hooks passed by hand) or
 * an object that knows its own trainable variables and hooks — an `AdapterModel`, whose adapter-level
 * variables (a hypernetwork's generator) and plugin hooks (AdaLoRA's rank allocation) then cannot be
 * forgotten.
 */
export interface TrainingTarget {
  /** The module run in the loss function (put in training / eval mode by the trainer). */
  readonly model: Module;
  /** Every trainable variable with a unique name (checkpoint keys). */
  namedTrainableVariables(): [string, tf.Variable][];
  /** Hooks the trainer runs every step. */
  trainingHooks(): TrainingHooks[];
}

/**
 * The module, trainable variables and hooks of a `train()` target, plus hooks given by hand. The
 * variables are listed on each call of `namedVariables` (a hook restored from a checkpoint may
 * have rebuilt them).
 */
export function resolveTrainingTarget(
  target: Module | TrainingTarget,
  extraHooks: readonly TrainingHooks[] = [],
): { module: Module; namedVariables: () => [string, tf.Variable][]; hooks: TrainingHooks[] } {
  if (target instanceof Module) {
    return { module: target, namedVariables: () => target.namedParameters().filter(([, variable]) => variable.trainable), hooks: [...extraHooks] };
  }
  return { module: target.model, namedVariables: () => target.namedTrainableVariables(), hooks: [...target.trainingHooks(), ...extraHooks] };
}
