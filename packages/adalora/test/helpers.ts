import * as tf from '@tensorflow/tfjs-core';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { entryToTensor, Linear, Module, readSafetensorsFile } from '@lora/core';

/** The reference fixtures of the monorepo. */
export const FIXTURES = path.resolve(__dirname, '../../../fixtures/reference');
export const ADALORA_FIXTURE = path.join(FIXTURES, 'adapters/gpt2_adalora');

export async function readJson<T = Record<string, unknown>>(file: string): Promise<T> {
  return JSON.parse(await readFile(file, 'utf8')) as T;
}

/** Deterministic pseudo-random numbers in [-scale, scale) (mulberry32), for float64 references. */
export function randomValues(count: number, seed: number, scale = 1): number[] {
  let state = seed >>> 0;
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out.push(((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale);
  }
  return out;
}

/** Float32-representable copies (what a float32 tensor holds). */
export function float32(values: readonly number[]): number[] {
  return values.map((v) => Math.fround(v));
}

export function maxAbsDifference(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) throw new Error(`Sizes differ: ${actual.length} vs ${expected.length}`);
  let worst = 0;
  for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
  return worst;
}

export function maxRelativeDifference(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  return maxAbsDifference(actual, expected) / (scale || 1);
}

class Container extends Module {
  add(name: string, module: Module): Module {
    return this.registerModule(name, module);
  }
}

/**
 * A module tree with a `Linear` at the path of every selected 2-D `.weight` of a checkpoint, holding
 * the checkpoint's values: the checkpoint's module paths without its forward pass, enough to load
 * and merge a PEFT adapter without the architecture (as core's PEFT fixture tests do).
 */
export async function linearTreeFromCheckpoint(
  file: string,
  options: { isLinear: (path: string) => boolean; fanInFanOut: (path: string) => boolean },
): Promise<Module> {
  const checkpoint = await readSafetensorsFile(file);
  const root = new Container();
  for (const [key, entry] of checkpoint.tensors) {
    if (!key.endsWith('.weight') || entry.shape.length !== 2) continue;
    const modulePath = key.slice(0, -'.weight'.length);
    if (!options.isLinear(modulePath)) continue;
    const fanInFanOut = options.fanInFanOut(modulePath);
    const [rows, cols] = entry.shape as [number, number];
    const bias = checkpoint.tensors.get(`${modulePath}.bias`);
    const linear = new Linear({ inFeatures: fanInFanOut ? rows : cols, outFeatures: fanInFanOut ? cols : rows, bias: bias !== undefined, fanInFanOut });
    tf.tidy(() => {
      linear.weight.assign(entryToTensor(entry));
      if (bias) linear.bias!.assign(entryToTensor(bias));
    });
    const segments = modulePath.split('.');
    let parent: Module = root;
    for (const segment of segments.slice(0, -1)) {
      const existing = parent.namedChildren().find(([name]) => name === segment)?.[1];
      parent = existing ?? (parent as Container).add(segment, new Container());
    }
    (parent as Container).add(segments[segments.length - 1]!, linear);
  }
  return root;
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
