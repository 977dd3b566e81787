import * as tf from '@tensorflow/tfjs-core';
import { ShapeError } from '@lora/core';
import { PACKAGE } from './config-fields.js';

/** Position ids [B, T]: the given ones (checked), or past, past+1, … for every row. */
export function positionIdsFor(positionIds: tf.Tensor | undefined, batch: number, time: number, past: number): tf.Tensor {
  if (positionIds) {
    if (positionIds.rank === 1 && positionIds.shape[0] === time) return tf.tidy(() => tf.tile(tf.reshape(positionIds, [1, time]), [batch, 1]));
    if (positionIds.rank !== 2 || positionIds.shape[0] !== batch || positionIds.shape[1] !== time) {
      throw new ShapeError(`[${PACKAGE}] positionIds`, [batch, time], positionIds.shape);
    }
    return positionIds;
  }
  return tf.tidy(() => tf.tile(tf.reshape(tf.range(past, past + time, 1, 'int32'), [1, time]), [batch, 1]));
}
