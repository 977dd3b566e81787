import * as tf from '@tensorflow/tfjs-core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { releaseCausalMasks } from '../src/index.js';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repo's copy of the shared reference fixtures. */
export const FIXTURES = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../fixtures/reference');

export function fixture(...parts: string[]): string {
  return path.join(FIXTURES, ...parts);
}

export function readJson<T = Record<string, unknown>>(file: string): T {
  return JSON.parse(readFileSync(file, 'utf8')) as T;
}

/** Flatten a nested number array. */
export function flat(value: unknown): number[] {
  return Array.isArray(value) ? value.flatMap(flat) : [Math.fround(value as number)];
}

export { maxRelativeError as relativeError } from '@lora/core/testing';

export function ids(rows: number[][]): tf.Tensor2D {
  return tf.tensor2d(rows, undefined, 'int32');
}

/**
 * `withoutTensorLeaks` for model code: the causal masks the models keep on purpose (one per size,
 * see `releaseCausalMasks`) are released before and after, so only real leaks count.
 */
export async function withoutLeaks<T>(fn: () => T | Promise<T>): Promise<T> {
  releaseCausalMasks();
  return withoutTensorLeaks(async () => {
    const result = await fn();
    releaseCausalMasks();
    return result;
  });
}
