import * as tf from '@tensorflow/tfjs-core';
import { fusedRowCrossEntropy } from './cross-entropy.js';
import { ShapeError } from './errors.js';

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
 * Mean next-token cross-entropy of a causal language model, as transformers computes it: logits
 * [B, T, V] predict `labels` [B, T] shifted by one; labels equal to -100 (and positions whose
 * `attentionMask` is 0, when given) are ignored.
 */
export function causalLmLoss(logits: tf.Tensor, labels: tf.Tensor, attentionMask?: tf.Tensor): tf.Scalar {
  if (logits.rank !== 3 || labels.rank !== 2 || logits.shape[0] !== labels.shape[0] || logits.shape[1] !== labels.shape[1]) {
    throw new ShapeError('[@lora/core] causalLmLoss logits vs labels', [labels.shape[0] ?? null, labels.shape[1] ?? null, null], logits.shape);
  }
  return tf.tidy(() => {
    const [batch, time, vocab] = logits.shape as [number, number, number];
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

/** Mean cross-entropy of classification logits [B, C] against integer labels [B]. */
export function classificationLoss(logits: tf.Tensor, labels: tf.Tensor): tf.Scalar {
  if (logits.rank !== 2 || labels.rank !== 1 || logits.shape[0] !== labels.shape[0]) {
    throw new ShapeError('[@lora/core] classificationLoss logits vs labels', [labels.shape[0] ?? null, null], logits.shape);
  }
  return tf.tidy(() => maskedCrossEntropy(logits as tf.Tensor2D, tf.cast(labels, 'int32') as tf.Tensor1D));
}
