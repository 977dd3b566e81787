import * as tf from '@tensorflow/tfjs-core';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Linear, Module } from '@lora/core';
import { linearTreeFromCheckpoint } from '@lora/core/testing';

export {
  linearTreeFromCheckpoint,
  maxAbsoluteError as maxAbsDifference,
  maxRelativeError as maxRelativeDifference,
  seededRandomValues as randomValues,
} from '@lora/core/testing';

/** The reference fixtures of the monorepo. */
export const FIXTURES = path.resolve(__dirname, '../../../fixtures/reference');
export const ADALORA_FIXTURE = path.join(FIXTURES, 'adapters/gpt2_adalora');

export async function readJson<T = Record<string, unknown>>(file: string): Promise<T> {
  return JSON.parse(await readFile(file, 'utf8')) as T;
}

/** Float32-representable copies (what a float32 tensor holds). */
export function float32(values: readonly number[]): number[] {
  return values.map((v) => Math.fround(v));
}

/** The GPT-2 fixture's transformer blocks as a tree of Linear layers (Conv1D layout). */
export function gpt2LinearTree(): Promise<Module> {
  return linearTreeFromCheckpoint(path.join(FIXTURES, 'models/gpt2/model.safetensors'), {
    isLinear: (p) => p.includes('.h.'),
    fanInFanOut: () => true,
  });
}

/** A small MLP with four targetable layers, for training tests. */
export class SmallNet extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  readonly fc3: Linear;
  readonly head: Linear;

  constructor(seed = 1) {
    super();
    this.fc1 = this.registerModule('fc1', new Linear({ inFeatures: 12, outFeatures: 16, seed }));
    this.fc2 = this.registerModule('fc2', new Linear({ inFeatures: 16, outFeatures: 16, fanInFanOut: true, seed: seed + 10 }));
    this.fc3 = this.registerModule('fc3', new Linear({ inFeatures: 16, outFeatures: 16, seed: seed + 20 }));
    this.head = this.registerModule('head', new Linear({ inFeatures: 16, outFeatures: 4, seed: seed + 30 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.head.forward(tf.tanh(this.fc3.forward(tf.tanh(this.fc2.forward(tf.tanh(this.fc1.forward(x))))))));
  }
}
