import * as tf from '@tensorflow/tfjs-core';

/** The parts of tfjs's tape nodes read here (tfjs-core's TapeNode: a recorded kernel call). */
interface RecordedCall {
  readonly inputs: Record<string, tf.Tensor | undefined>;
  readonly outputs: readonly tf.Tensor[];
}

/** Per tape (tfjs starts a new array for each outermost gradient scope): nodes scanned so far, and the ids of the tensors that depend on a trainable variable. */
const reached = new WeakMap<readonly RecordedCall[], { scanned: number; ids: Set<number> }>();

const isTrainableVariable = (tensor: tf.Tensor): boolean => tensor instanceof tf.Variable && tensor.trainable;

/**
 * Whether `tensor` is, or depends through the ops recorded so far on the active gradient tape on, a
 * trainable variable: whether training (gradients with respect to the trainable variables) sends a
 * gradient back to it. A hint for a fused kernel that can skip an input's gradient: the first
 * adapted layer's input, computed from frozen weights only, needs none. True when no tape records.
 * Each tape is scanned once, node by node as it grows (the nodes recorded since the last call).
 */
export function dependsOnTrainableVariable(tensor: tf.Tensor): boolean {
  const state = tf.engine().state as unknown as { gradientDepth: number; activeTape: readonly RecordedCall[] | null };
  const tape = state.activeTape;
  if (state.gradientDepth === 0 || !Array.isArray(tape)) return true;
  let memo = reached.get(tape);
  if (memo === undefined) {
    memo = { scanned: 0, ids: new Set() };
    reached.set(tape, memo);
  }
  const { ids } = memo;
  for (; memo.scanned < tape.length; memo.scanned++) {
    const node = tape[memo.scanned]!;
    const inputs: (tf.Tensor | undefined)[] = Object.values(node.inputs);
    if (inputs.some((input) => input !== undefined && (isTrainableVariable(input) || ids.has(input.id)))) {
      for (const output of node.outputs) ids.add(output.id);
    }
  }
  return isTrainableVariable(tensor) || ids.has(tensor.id);
}
