import * as tf from '@tensorflow/tfjs-core';
import { applyToLastAxis, LoraError, type AdapterInstance, type ApplyContext } from '@lora/core';
import type { HyperLoraState } from './hyper-state.js';

/**
 * A HyperLoRA on one layer. It holds no variables of its own: it reads the A/B generated for the
 * current forward pass from the adapter's {@link HyperLoraState} and adds `s·B(c)·A(c)·x` per row.
 * One condition for the batch broadcasts (two small matMuls); per-row conditions gather each row's
 * factors from the u generated ones (gather's gradient sums back into the u conditions).
 */
export class HyperLoraAdapter implements AdapterInstance {
  /** The adapter-level state that owns the generator and hands this layer its factors each forward pass. */
  readonly state: HyperLoraState;
  /** Dotted path of the adapted layer in the model, named in shape errors. */
  readonly modulePath: string;
  /** This layer's index in the state's `plan.targets`, used to pick its generated factors. */
  readonly targetIndex: number;

  /** Attaches to the state, which lives until the last of its layers is disposed (or the AdapterModel disposes it). */
  constructor(options: { state: HyperLoraState; modulePath: string }) {
    this.state = options.state;
    this.modulePath = options.modulePath;
    this.targetIndex = options.state.targetIndex(options.modulePath);
    this.state.attachLayer(this);
  }

  /** None: the generator's variables are saved once by the adapter state. */
  namedTensors(): [string, tf.Variable][] {
    return [];
  }

  apply(input: tf.Tensor, result: tf.Tensor, context: ApplyContext): tf.Tensor {
    return tf.tidy(() => {
      // The state checks the input's batch against a per-row condition list before generating anything.
      const { a, b, rowIndex } = this.state.factorsFor(this.targetIndex, { inputShape: input.shape, modulePath: this.modulePath });
      const outFeatures = context.base.outFeatures;
      let delta: tf.Tensor;
      if (rowIndex === null) {
        const loraA = tf.reshape(a, [a.shape[1], a.shape[2]]) as tf.Tensor2D;
        const loraB = tf.reshape(b, [b.shape[1], b.shape[2]]) as tf.Tensor2D;
        delta = applyToLastAxis(input, outFeatures, (m) => tf.matMul(tf.matMul(m, loraA, false, true), loraB, false, true));
      } else {
        const rows = rowIndex.shape[0];
        const x = tf.reshape(input, [rows, -1, input.shape[input.rank - 1]!]) as tf.Tensor3D;
        const rowA = tf.gather(a, rowIndex) as tf.Tensor3D;
        const rowB = tf.gather(b, rowIndex) as tf.Tensor3D;
        delta = tf.reshape(tf.matMul(tf.matMul(x, rowA, false, true), rowB, false, true), [...input.shape.slice(0, -1), outFeatures]);
      }
      return tf.add(result, tf.mul(delta, this.state.scaling));
    });
  }

  /**
   * Refuses: a HyperLoRA has one ΔW per condition, none for the adapter as a whole, and silently
   * baking a default condition into the base would hide which one was merged. Merge an exported
   * condition instead (core's merge calls this before touching any base weight).
   * @throws {LoraError} always, saying how to export one condition as a plain LoRA and merge that.
   */
  deltaWeight(): tf.Tensor2D {
    throw new LoraError(
      `[@lora/hyper] HyperLoRA adapter "${this.state.adapterName}" cannot be merged: its ΔW depends on the condition, so there is no single weight to fold in. ` +
        'Export one condition as a plain LoRA and merge that: exportHyperLoraAsLora(adapterModel, { condition }) (or on the command line: lora export --adapter <dir> --condition factor=value --out <lora dir>, then lora merge --adapter <lora dir>).',
      { plugin: 'hyper' },
    );
  }

  /**
   * Detach from the state: the generator lives in the adapter-level state, which frees itself when
   * its last layer is disposed (so `model.dispose()` on the wrapped model frees it too).
   */
  dispose(): void {
    this.state.detachLayer(this);
  }
}
