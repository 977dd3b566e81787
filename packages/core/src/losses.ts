import * as tf from '@tensorflow/tfjs-core';
import { fusedRowCrossEntropy } from './cross-entropy.js';
import { LoraError, ShapeError } from './errors.js';
import { hostReadIsCheap } from './host-reads.js';

/** Label value ignored by the losses, as PyTorch's `ignore_index`. */
export const IGNORE_INDEX = -100;

function maskedCrossEntropy(logits2d: tf.Tensor2D, labels: tf.Tensor1D): tf.Scalar {
  return tf.tidy(() => {
    const vocab = logits2d.shape[1];
    const valid = tf.cast(tf.notEqual(labels, IGNORE_INDEX), 'float32');
    const count = tf.maximum(tf.sum(valid), 1);
    // One kernel each way on WASM (the same labels rules as below).
    const rowLosses = fusedRowCrossEntropy(logits2d, labels);
    if (rowLosses !== null) return tf.div(tf.sum(rowLosses), count) as tf.Scalar;
    const safeLabels = tf.maximum(labels, 0);
    // One-hot selection instead of gather: gather's gradient (UnsortedSegmentSum) is missing on WASM.
    const oneHot = tf.oneHot(tf.cast(safeLabels, 'int32'), vocab);
    const logProbabilities = tf.logSoftmax(logits2d);
    const picked = tf.sum(tf.mul(logProbabilities, oneHot), 1);
    return tf.div(tf.neg(tf.sum(tf.mul(picked, valid))), count) as tf.Scalar;
  });
}

/**
 * Refuse a label that is neither an index into the `classes` logits nor {@link IGNORE_INDEX}, as
 * PyTorch's cross-entropy does ("Target out of bounds"): counted in the mean, it would silently
 * lower the loss. `skip(index)` marks positions (flat, row-major) that are never a target.
 */
function checkLabels(caller: string, labels: tf.Tensor, classes: number, skip?: (index: number) => boolean): void {
  // On a GPU backend a read would stall the pipeline every step, so the labels are not checked there:
  // an out-of-range label then adds 0 to the sum (tfjs's oneHot gives a row of zeros) while it still
  // counts in the mean.
  if (!hostReadIsCheap()) return;
  const values = labels.dataSync();
  const columns = labels.rank === 2 ? labels.shape[1]! : 0;
  for (let i = 0; i < values.length; i++) {
    const value = values[i]!;
    if (value === IGNORE_INDEX || (Number.isInteger(value) && value >= 0 && value < classes) || skip?.(i)) continue;
    const at = labels.rank === 2 ? `[${Math.floor(i / columns)}][${i % columns}]` : `[${i}]`;
    throw new LoraError(
      `[@lora/core] ${caller}: labels${at} must be an integer from 0 to ${classes - 1} (the logits have ${classes} classes) or ${IGNORE_INDEX} (ignored), got ${value}. ` +
        `Fix the labels, or set positions that have no target to ${IGNORE_INDEX}.`,
    );
  }
}

/**
 * Mean next-token cross-entropy of a causal language model, as transformers computes it: logits
 * [B, T, V] predict `labels` [B, T] shifted by one; labels equal to -100 (and positions whose
 * `attentionMask` is 0, when given) are ignored.
 * @throws {ShapeError} when the shapes do not agree.
 * @throws {LoraError} for a label that is not an index into the vocabulary nor -100 (checked on the
 * cpu, wasm and tensorflow backends; not on GPU backends, where reading the labels would stall every step).
 */
export function causalLmLoss(logits: tf.Tensor, labels: tf.Tensor, attentionMask?: tf.Tensor): tf.Scalar {
  if (logits.rank !== 3 || labels.rank !== 2 || logits.shape[0] !== labels.shape[0] || logits.shape[1] !== labels.shape[1]) {
    throw new ShapeError('[@lora/core] causalLmLoss logits vs labels', [labels.shape[0] ?? null, labels.shape[1] ?? null, null], logits.shape);
  }
  const [batch, time, vocab] = logits.shape as [number, number, number];
  // The first position is never a target, nor is one the attention mask leaves out.
  const mask = attentionMask && hostReadIsCheap() ? attentionMask.dataSync() : undefined;
  checkLabels('causalLmLoss', labels, vocab, (i) => i % time === 0 || (mask !== undefined && mask[i] === 0));
  return tf.tidy(() => {
    // Position t predicts label t + 1. The labels move left (the last position gets none) rather
    // than the logits being cut: the mean is the same, and the gradient needs no pad back to the
    // logits' shape (a slice's gradient) over the whole [batch, time, vocab].
    const ignored = tf.fill([batch, 1], IGNORE_INDEX, 'int32');
    let nextLabels = tf.concat([tf.cast(tf.slice(labels, [0, 1], [batch, time - 1]), 'int32'), ignored], 1);
    if (attentionMask) {
      const keep = tf.concat([tf.cast(tf.slice(attentionMask, [0, 1], [batch, time - 1]), 'bool'), tf.zeros([batch, 1], 'bool')], 1);
      nextLabels = tf.where(keep, nextLabels, tf.fill(nextLabels.shape, IGNORE_INDEX, 'int32'));
    }
    return maskedCrossEntropy(tf.reshape(logits, [-1, vocab]) as tf.Tensor2D, tf.reshape(nextLabels, [-1]) as tf.Tensor1D);
  });
}

/**
 * Mean cross-entropy of classification logits [B, C] against integer labels [B] (-100: ignored).
 * @throws {ShapeError} when the shapes do not agree.
 * @throws {LoraError} for a label outside 0…C−1 other than -100 (checked as in {@link causalLmLoss}).
 */
export function classificationLoss(logits: tf.Tensor, labels: tf.Tensor): tf.Scalar {
  if (logits.rank !== 2 || labels.rank !== 1 || logits.shape[0] !== labels.shape[0]) {
    throw new ShapeError('[@lora/core] classificationLoss logits vs labels', [labels.shape[0] ?? null, null], logits.shape);
  }
  checkLabels('classificationLoss', labels, logits.shape[1]!);
  return tf.tidy(() => maskedCrossEntropy(logits as tf.Tensor2D, tf.cast(labels, 'int32') as tf.Tensor1D));
}
