import * as tf from '@tensorflow/tfjs-core';
import {
  applyToLastAxis,
  checkBaseShape,
  dropout,
  Linear,
  LoraAdapter,
  LoraError,
  type AdapterInstance,
  type ApplyContext,
  type BaseLayer,
} from '@lora/core';
import { hostReadIsCheap, lowRankLinearTrain } from '@lora/core/internal';

/** Options for {@link DoraAdapter}. */
export interface DoraAdapterOptions {
  /** The layer the adapter wraps; its weight initialises the magnitude vector. Not owned. */
  readonly base: BaseLayer;
  /** Rank of A [r, in] and B [out, r]. */
  readonly r: number;
  /** Scaling numerator: s = alpha / r (or alpha / √r with `useRslora`). */
  readonly alpha: number;
  /** Scale by alpha / √r (default false). */
  readonly useRslora?: boolean;
  /** Dropout probability on the adapter input (default 0). */
  readonly dropout?: number;
  /** As `initLoraWeights` in LoRA's config (default true: A kaiming-uniform, B zeros). */
  readonly init?: boolean | 'gaussian';
  /** Seed for A (and B when `init` is false); default unseeded. */
  readonly seed?: number;
  /** The wrapped layer's path in the model, named in errors (default: not named). */
  readonly modulePath?: string;
}

/** ‖rows‖₂ of a [out, in] matrix: one value per output feature. */
function rowNorm(matrix: tf.Tensor): tf.Tensor1D {
  return tf.sqrt(tf.sum(tf.square(matrix), 1)) as tf.Tensor1D;
}

/** ‖columns‖₂ of an [in, out] matrix (GPT-2's Conv1D layout): one value per output feature. */
function columnNorm(matrix: tf.Tensor): tf.Tensor1D {
  return tf.sqrt(tf.sum(tf.square(matrix), 0)) as tf.Tensor1D;
}

/**
 * `compute()`, detached from the gradient (torch's `.detach()`): it runs inside a custom-gradient
 * kernel whose one input is `input`, so the tape records none of its ops, and the variables it reads
 * by closure (A and B) are not inputs of any recorded op: no gradient, not even a zero one to add
 * to theirs, is computed through it.
 */
function detached(input: tf.Tensor, compute: () => tf.Tensor1D): tf.Tensor1D {
  return tf.customGrad((x) => ({ value: compute(), gradFunc: () => tf.zerosLike(x as tf.Tensor) }))(input) as tf.Tensor1D;
}

/**
 * DoRA on one layer, as PEFT computes it for `use_dora=True` (`DoraLinearLayer`): the weight is
 * re-parameterised as `W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖`, with the norm taken per output row
 * (one value per output feature) and **detached** from the gradient (paper §4.3), and the
 * magnitude vector m [out] trainable.
 *
 * Forward, with `g = m / ‖W + s·B·A‖` and `result` the output so far (base output with its bias):
 * - no dropout, or eval mode: `result + (g − 1)·(result − bias) + g·s·B·A·x`;
 * - training with dropout: `result + (g − 1)·(x_d·Wᵀ) + g·s·B·A·x_d`, `x_d = dropout(x)` (PEFT
 *   recomputes the base product on the dropped-out input).
 *
 * Merge caches the norm it used so that unmerge can divide it out again, as PEFT does.
 * The adapter owns its variables (`lora_A.weight`, `lora_B.weight`, `lora_magnitude_vector`) and
 * frees them in {@link DoraAdapter.dispose}.
 *
 * @example
 * const adapter = new DoraAdapter({ base: linear, r: 8, alpha: 16 });
 * const y = tf.tidy(() => adapter.apply(x, linear.forward(x), { base: linear, training: false }));
 */
export class DoraAdapter implements AdapterInstance {
  /** Rank. */
  readonly r: number;
  /** Alpha as configured. */
  readonly alpha: number;
  /** s = alpha / r, or alpha / √r with rsLoRA. */
  readonly scaling: number;
  /** Dropout probability on the adapter input. */
  readonly dropout: number;
  /** A [r, in]. */
  readonly loraA: tf.Variable;
  /** B [out, r]. */
  readonly loraB: tf.Variable;
  /** m [out], initialised to ‖W + s·B·A‖ per output row (‖W‖ with the default B = 0). */
  readonly magnitude: tf.Variable;
  private readonly factors: LoraAdapter;
  /** The norm used by the last merge, kept for unmerge (PEFT's `<adapter>-weight_norm` cache). */
  private cachedMergeNorm: tf.Tensor1D | null = null;

  constructor(options: DoraAdapterOptions) {
    const { base } = options;
    // A and B are initialised exactly as LoRA's (PEFT's update_layer runs before the DoRA init).
    this.factors = new LoraAdapter({
      inFeatures: base.inFeatures,
      outFeatures: base.outFeatures,
      r: options.r,
      alpha: options.alpha,
      useRslora: options.useRslora,
      dropout: options.dropout,
      init: options.init,
      seed: options.seed,
    });
    this.r = options.r;
    this.alpha = options.alpha;
    this.scaling = this.factors.scaling;
    this.dropout = this.factors.dropout;
    this.loraA = this.factors.loraA;
    this.loraB = this.factors.loraB;
    this.magnitude = tf.tidy(() => {
      const weight = base.denseWeight();
      return tf.variable(rowNorm(tf.add(weight, this.factors.deltaWeight())), true);
    });
    // An output row of zeros has norm 0: the magnitude scaling m / ‖W + ΔW‖ is then 0/0, NaN in every
    // forward pass (PEFT's too), and a merge writes it into the base. Checked where the magnitudes are
    // in host memory (cpu, wasm, tensorflow); a GPU backend would stall on the read (and headless
    // Chromium's WebGPU on SwiftShader breaks on it), and there the NaN stops training at its first
    // step instead (the trainer keeps no non-finite loss).
    const zero = hostReadIsCheap() ? (this.magnitude.dataSync() as Float32Array).indexOf(0) : -1;
    if (zero >= 0) {
      this.factors.dispose();
      this.magnitude.dispose();
      throw new LoraError(
        `[dora] Cannot adapt ${options.modulePath ?? 'this layer'}: row ${zero} of its weight (output feature ${zero}) is all zeros, so DoRA's magnitude ‖W + ΔW‖ is 0 there and its output 0/0 = NaN. Leave the layer out of targetModules, or adapt it with LoRA.`,
        { plugin: 'dora' },
      );
    }
  }

  /** `lora_A.weight` [r, in], `lora_B.weight` [out, r], `lora_magnitude_vector` [out] (no `.weight`, as PEFT saves it). */
  namedTensors(): [string, tf.Variable][] {
    return [...this.factors.namedTensors(), ['lora_magnitude_vector', this.magnitude]];
  }

  /**
   * ‖W + s·B·A‖ per output row for the base's current weight, detached from the gradient (paper
   * §4.3): A and B get their gradient through the numerator only. The caller disposes the result.
   */
  weightNorm(base: BaseLayer): tf.Tensor1D {
    return tf.tidy(() => {
      // A core Linear's stored weight as it is (no copy); other bases' dense weight.
      const weight = base instanceof Linear ? base.weight : base.denseWeight();
      return detached(weight, () => this.combinedNorm(base, weight));
    });
  }

  /**
   * ‖W + s·B·A‖ per output row, `weight` being the base's ([out, in], or a fan-in-fan-out Linear's
   * stored [in, out]), as plain ops: for callers that tape nothing (inside a custom gradient);
   * {@link DoraAdapter.weightNorm} detaches it.
   */
  private combinedNorm(base: BaseLayer, weight: tf.Tensor): tf.Tensor1D {
    // The stored [in, out] weight's columns, with (B·A)ᵀ = Aᵀ·Bᵀ: no transposed copy of W each step.
    if (base instanceof Linear && base.fanInFanOut) return columnNorm(tf.add(weight, tf.mul(tf.matMul(this.loraA, this.loraB, true, true), this.scaling)));
    return rowNorm(tf.add(weight, tf.mul(tf.matMul(this.loraB, this.loraA), this.scaling)));
  }

  /**
   * Add DoRA's contribution to `result` (the output so far, base bias included) and return the new
   * output (see the class comment for the formula). Runs in `tf.tidy`; the caller disposes the result.
   */
  apply(input: tf.Tensor, result: tf.Tensor, context: ApplyContext): tf.Tensor {
    return tf.tidy(() => {
      const { base } = context;
      const scale = tf.div(this.magnitude, this.weightNorm(base));
      let x = input;
      let baseResult: tf.Tensor;
      if (context.training && this.dropout > 0) {
        x = dropout(input, this.dropout);
        baseResult = base.forwardWithoutBias(x);
      } else {
        // PEFT reuses the output so far minus the bias. With several adapters active that output
        // includes the earlier adapters' contributions, as in PEFT.
        baseResult = base.bias ? tf.sub(result, base.bias) : result;
      }
      const loraResult = applyToLastAxis(x, base.outFeatures, (matrix) =>
        tf.matMul(tf.matMul(matrix, this.loraA as tf.Tensor2D, false, true), this.loraB as tf.Tensor2D, false, true),
      );
      const doraResult = tf.add(tf.mul(tf.sub(scale, 1), baseResult), tf.mul(tf.mul(scale, loraResult), this.scaling));
      return tf.add(result, doraResult);
    });
  }

  /**
   * The base layer (core's `Linear`) and this adapter as one output, its terms gathered:
   * `g ⊙ (x·Wᵀ + s·B·A·x) + bias`, equal to {@link DoraAdapter.apply}'s forward up to float32
   * rounding. The bracket is LoRA's layer output without the bias, one fused kernel each way where
   * the backend has them (core's WASM kernels); then one scaling and the bias, instead of the base
   * product, two rank-r products and six passes over the [tokens, out] output forward (and theirs
   * backward). Null (the base runs, then `apply`) for any other base, where the backend has no fused
   * kernels, and in training with dropout, where PEFT's base product on the dropped-out input is a
   * product of its own.
   */
  applyWithBase(input: tf.Tensor, context: ApplyContext): tf.Tensor | null {
    const base = context.base;
    if (!(base instanceof Linear) || (context.training && this.dropout > 0)) return null;
    const combined = lowRankLinearTrain(input, { weight: base.weight, bias: null, fanInFanOut: base.fanInFanOut }, this.loraA, this.loraB, this.scaling);
    if (combined === null) return null;
    const output = this.magnitudeScaled(combined, base);
    combined.dispose();
    return output;
  }

  /**
   * `z ⊙ g + bias` with g = m / ‖W + s·B·A‖ (the norm detached), as one recorded op whose gradients
   * are dz = dy ⊙ g, dm = Σ_rows(dy ⊙ z) / ‖W + s·B·A‖ and, for a trainable bias, Σ_rows dy: the
   * norm's ops, the division, the scaling and the bias run untaped, and the backward pass is four
   * kernels instead of tfjs's broadcasting gradients of Div, Mul and Add (with their casts, reshapes
   * and sums): about half of a DoRA layer's kernel calls in a training step, each with the engine's
   * fixed cost.
   */
  private magnitudeScaled(z: tf.Tensor, base: Linear): tf.Tensor {
    const outFeatures = base.outFeatures;
    const bias = base.bias;
    // A frozen bias is read by closure (no gradient computed for it); a trainable one is an input.
    const biasInput = bias !== null && bias.trainable;
    const op = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const [x, magnitude] = inputs as [tf.Tensor, tf.Tensor];
      const save = inputs[inputs.length - 1] as tf.GradSaveFunc;
      // Inside this op nothing is taped, so the norm needs no detaching of its own.
      const norm = this.combinedNorm(base, base.weight);
      const scale = tf.div(magnitude, norm);
      const scaled = tf.mul(x, scale);
      save([x, scale, norm]);
      return {
        value: bias ? tf.add(scaled, bias) : scaled,
        gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
          const [zSaved, scaleSaved, normSaved] = saved as [tf.Tensor, tf.Tensor, tf.Tensor];
          const gradient = dy as tf.Tensor;
          const rows = tf.reshape(tf.mul(gradient, zSaved), [-1, outFeatures]);
          const gradients = [tf.mul(gradient, scaleSaved), tf.div(tf.sum(rows, 0), normSaved)];
          return biasInput ? [...gradients, tf.sum(tf.reshape(gradient, [-1, outFeatures]), 0)] : gradients;
        },
      };
    });
    return biasInput ? op(z, this.magnitude, bias) : op(z, this.magnitude);
  }

  /** The low-rank part alone, s·B·A [out, in] (PEFT's `get_delta_weight`). The caller disposes it. */
  loraDeltaWeight(): tf.Tensor2D {
    return this.factors.deltaWeight();
  }

  /** ΔW = (m / ‖W + s·B·A‖) ⊙ (W + s·B·A) − W for the base's current weight. The caller disposes it. */
  deltaWeight(base: BaseLayer): tf.Tensor2D {
    return tf.tidy(() => {
      const weight = base.denseWeight();
      const combined = tf.add(weight, this.loraDeltaWeight());
      const factor = tf.div(this.magnitude, rowNorm(combined));
      return tf.sub(tf.mul(tf.reshape(factor, [-1, 1]), combined), weight) as tf.Tensor2D;
    });
  }

  /**
   * `W' = (m / n)[:, None] ⊙ (W + s·B·A)` with `n = ‖W + s·B·A‖` per row of the given weight; `n` is
   * cached for {@link DoraAdapter.unmergeWeight}. The caller disposes the result.
   */
  mergeWeight(weight: tf.Tensor2D, base: BaseLayer): tf.Tensor2D {
    checkBaseShape(base, this.loraA.shape[1]!, this.loraB.shape[0]!);
    return tf.tidy(() => {
      const combined = tf.add(weight, this.loraDeltaWeight());
      const norm = rowNorm(combined);
      this.cachedMergeNorm?.dispose();
      this.cachedMergeNorm = tf.keep(norm);
      const factor = tf.div(this.magnitude, norm);
      return tf.mul(tf.reshape(factor, [-1, 1]), combined) as tf.Tensor2D;
    });
  }

  /**
   * Inverse of {@link DoraAdapter.mergeWeight}: `W = W' / (m / n)[:, None] − s·B·A` with the cached `n`
   * (it cannot be recomputed from the merged weight). The caller disposes the result.
   * @throws {LoraError} when this adapter was not merged.
   */
  unmergeWeight(weight: tf.Tensor2D): tf.Tensor2D {
    const norm = this.cachedMergeNorm;
    if (norm === null) {
      throw new LoraError('[@lora/dora] Cannot unmerge a DoRA adapter that was not merged: the weight norm cached at merge time is missing.', {
        plugin: 'dora',
      });
    }
    const restored = tf.tidy(() => {
      const factor = tf.div(this.magnitude, norm);
      return tf.sub(tf.div(weight, tf.reshape(factor, [-1, 1])), this.loraDeltaWeight()) as tf.Tensor2D;
    });
    norm.dispose();
    this.cachedMergeNorm = null;
    return restored;
  }

  /** Free A, B, the magnitude and any cached merge norm. */
  dispose(): void {
    this.factors.dispose();
    this.magnitude.dispose();
    this.cachedMergeNorm?.dispose();
    this.cachedMergeNorm = null;
  }
}
