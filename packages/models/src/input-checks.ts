import type * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '@lora/core';
import { hostReadIsCheap } from '@lora/core/internal';
import { PACKAGE } from './config-fields.js';

/** Where an id tensor goes: its option name, the embedding's row count and the config field that sets it. */
export interface IdTensorTarget {
  /** The argument or option, e.g. `inputIds`, `positionIds`, `tokenTypeIds`. */
  readonly name: string;
  /** Rows of the embedding table the ids index. */
  readonly size: number;
  /** The config.json field that sets `size`, e.g. `vocab_size`, `n_positions`. */
  readonly field: string;
}

function position(index: number, shape: readonly number[]): string {
  const at: number[] = [];
  for (let axis = shape.length - 1; axis >= 0; axis--) {
    at.unshift(index % shape[axis]!);
    index = Math.floor(index / shape[axis]!);
  }
  return at.map((i) => `[${i}]`).join('');
}

/**
 * Refuse ids an embedding would silently truncate or misread, before it runs: ids must be int32, or
 * float32 holding integers (a bool or fractional id would be cast to another row), and lie in
 * [0, size). The error names the position and the config field that sets the table's size. Reads
 * the ids (a small [B, T] tensor) synchronously, on the backends where that is a copy (cpu, wasm,
 * tensorflow); a GPU backend (webgl, webgpu) checks the dtype only, as core's losses check labels
 * there: a read would stall every forward pass, so an out-of-range id goes unreported there.
 * @throws {ConfigError} naming `name` (with the offending position) and `field`.
 */
export function checkIdTensor(ids: tf.Tensor, target: IdTensorTarget): void {
  if (ids.dtype !== 'int32' && ids.dtype !== 'float32') {
    throw new ConfigError({
      plugin: PACKAGE,
      field: target.name,
      received: `a ${ids.dtype} tensor`,
      expected: 'an int32 tensor of ids (or float32 holding integers)',
      hint: `Build it with tf.tensor2d(rows, undefined, 'int32').`,
    });
  }
  if (!hostReadIsCheap()) return;
  const values = ids.dataSync();
  for (let i = 0; i < values.length; i++) {
    const value = values[i]!;
    if (Number.isInteger(value) && value >= 0 && value < target.size) continue;
    const fractional = !Number.isInteger(value);
    throw new ConfigError({
      plugin: PACKAGE,
      field: `${target.name}${position(i, ids.shape)}`,
      received: value,
      expected: `an integer in [0, ${target.size}) (${target.field} ${target.size} in config.json)`,
      hint: fractional
        ? 'Ids must be whole numbers: an embedding would truncate it to another row.'
        : target.field === 'vocab_size'
          ? 'Check that the tokenizer belongs to the model (its vocab_size).'
          : `The model has ${target.size} rows for ${target.name}: shorten the input or fix the ids.`,
    });
  }
}
