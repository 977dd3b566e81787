import * as tf from '@tensorflow/tfjs-core';
import type { BaseLayer } from './base-layer.js';
import { ShapeError } from './errors.js';
import { checkLayerSizes } from './layer-sizes.js';
import { Module } from './module.js';
import { fusedBiasProductIsSafe } from './wasm-matmul.js';

/** Options for {@link Linear}. */
export interface LinearOptions {
  /** Size of the input's last axis (PyTorch's `in_features`). */
  readonly inFeatures: number;
  /** Size of the output's last axis (PyTorch's `out_features`). */
  readonly outFeatures: number;
  /** Whether to hold a bias (default true). */
  readonly bias?: boolean;
  /** Store the weight [in, out] like GPT-2's Conv1D (default false: PyTorch's [out, in]). */
  readonly fanInFanOut?: boolean;
  /** Seed for the default PyTorch-style init U(−1/√in, 1/√in). */
  readonly seed?: number;
}

/** Whether ops run now are recorded for a gradient (inside `tf.grad`, `tf.variableGrads`, `train()`). */
function tapeRecording(): boolean {
  return tf.engine().state.gradientDepth > 0;
}

/** Apply `fn` to the last axis of `input` as a 2-D [rows, features] matrix and restore the leading axes. */
export function applyToLastAxis(input: tf.Tensor, outFeatures: number, fn: (matrix: tf.Tensor2D) => tf.Tensor2D): tf.Tensor {
  if (input.rank === 2) return fn(input as tf.Tensor2D);
  const leading = input.shape.slice(0, -1);
  const features = input.shape[input.rank - 1]!;
  return tf.reshape(fn(tf.reshape(input, [-1, features])), [...leading, outFeatures]);
}

/**
 * A fully connected layer `y = x·Wᵀ + b` holding `weight` as PyTorch does ([out, in]),
 * or [in, out] with `fanInFanOut` (GPT-2's Conv1D, `y = x·W + b`). Parameter names are
 * `weight` and `bias`, as in Hugging Face checkpoints.
 *
 * @example
 * const layer = new Linear({ inFeatures: 64, outFeatures: 32 });
 * const y = tf.tidy(() => layer.forward(tf.ones([2, 64]))); // [2, 32]
 */
export class Linear extends Module implements BaseLayer {
  /** Size of the input's last axis (PyTorch's `in_features`). */
  readonly inFeatures: number;
  /** Size of the output's last axis (PyTorch's `out_features`). */
  readonly outFeatures: number;
  readonly fanInFanOut: boolean;
  /** The float32 weight parameter `weight`: [out, in], or [in, out] with `fanInFanOut`. */
  readonly weight: tf.Variable;
  readonly bias: tf.Variable | null;

  /**
   * A frozen float32 `Linear` computing what `layer` computes: its dense weight and a copy of its bias,
   * stored in the given layout (default the layer's own `fanInFanOut`). `layer` is not changed. Used to
   * turn any base layer (a 4-bit one) back into a float layer.
   */
  static fromBaseLayer(layer: BaseLayer & { readonly training?: boolean }, options: { readonly fanInFanOut?: boolean } = {}): Linear {
    const linear = new Linear({ inFeatures: layer.inFeatures, outFeatures: layer.outFeatures, bias: layer.bias !== null, fanInFanOut: options.fanInFanOut ?? layer.fanInFanOut });
    tf.tidy(() => {
      linear.assignDenseWeight(layer.denseWeight());
      if (layer.bias && linear.bias) linear.bias.assign(layer.bias);
    });
    linear.setTrainable(false);
    linear.training = layer.training ?? linear.training;
    return linear;
  }

  /** @throws {ConfigError} when `inFeatures` or `outFeatures` is not a positive integer. */
  constructor(options: LinearOptions) {
    super();
    checkLayerSizes(options, ['inFeatures', 'outFeatures'], 'Linear takes the sizes of its input and output features.');
    this.inFeatures = options.inFeatures;
    this.outFeatures = options.outFeatures;
    this.fanInFanOut = options.fanInFanOut ?? false;
    const bound = 1 / Math.sqrt(options.inFeatures);
    const shape: [number, number] = this.fanInFanOut ? [options.inFeatures, options.outFeatures] : [options.outFeatures, options.inFeatures];
    const initialWeight = tf.randomUniform(shape, -bound, bound, 'float32', options.seed);
    this.weight = this.registerParameter('weight', initialWeight);
    initialWeight.dispose();
    if (options.bias ?? true) {
      const initialBias = tf.randomUniform([options.outFeatures], -bound, bound, 'float32', options.seed === undefined ? undefined : options.seed + 1);
      this.bias = this.registerParameter('bias', initialBias);
      initialBias.dispose();
    } else {
      this.bias = null;
    }
  }

  private checkInput(input: tf.Tensor): void {
    this.throwIfDisposed('[@lora/core] Linear');
    if (input.shape[input.rank - 1] !== this.inFeatures) {
      throw new ShapeError('[@lora/core] Linear input', [null, this.inFeatures], input.shape);
    }
  }

  /**
   * `input · Wᵀ + b` over the last axis ([…, inFeatures] → […, outFeatures]), in `tf.tidy`; the caller disposes the result.
   * @throws {ShapeError} when the last axis of `input` is not `inFeatures`.
   */
  forward(input: tf.Tensor): tf.Tensor {
    this.checkInput(input);
    const frozen = (parameter: tf.Variable | null): boolean => parameter === null || !parameter.trainable;
    return tf.tidy(() =>
      applyToLastAxis(input, this.outFeatures, (x) => {
        if (this.bias !== null && fusedBiasProductIsSafe()) {
          // Inference: no gradient to shape, so the bias goes inside the product.
          if (!tapeRecording()) return tf.fused.matMul({ a: x, b: this.weight as tf.Tensor2D, transposeB: !this.fanInFanOut, bias: this.bias }) as tf.Tensor2D;
          if (frozen(this.weight) && frozen(this.bias)) return this.frozenAffine(x, this.bias);
          if (!frozen(this.weight) && !frozen(this.bias)) return this.trainableAffine(x, this.bias);
        }
        // matMul + add where one of the weight and bias is trainable and the other frozen (or where
        // the fused product is not safe: tfjs-backend-wasm 4.22's own fused kernel adds the bias
        // wrongly for a transposed weight): tf.fused.matMul's gradient computes every input's, so
        // the frozen one's would be paid for; plain matMul computes only the gradients needed.
        const product = tf.matMul(x, this.weight as tf.Tensor2D, false, !this.fanInFanOut);
        return (this.bias ? tf.add(product, this.bias) : product) as tf.Tensor2D;
      })
    );
  }

  /**
   * `x·op(W) + b` for a frozen weight and bias (LoRA training's base layers): the bias is added
   * inside the product (XNNPACK adds it as it writes the result, on WASM) instead of by a second
   * kernel, and the gradient is the input's alone, dy·op(W)ᵀ; like PyTorch's
   * `requires_grad=False`, there is none with respect to W or b.
   */
  private frozenAffine(input: tf.Tensor2D, bias: tf.Variable): tf.Tensor2D {
    const weight = this.weight as tf.Tensor2D;
    const affine = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const x = inputs[0] as tf.Tensor2D;
      return {
        value: tf.fused.matMul({ a: x, b: weight, transposeB: !this.fanInFanOut, bias }),
        gradFunc: (dy: tf.Tensor) => this.inputGradient(dy as tf.Tensor2D, weight),
      };
    });
    return affine(input) as tf.Tensor2D;
  }

  /**
   * `x·op(W) + b` for a trainable weight and bias (full fine-tuning): the bias is added inside the
   * product, as in {@link frozenAffine}, instead of by an Add kernel after it. The Add rewrote the
   * whole output on the calling thread alone, so the next kernel's helper thread read its half from
   * the other core's cache: in full fine-tuning steps of the bench's `small` GPT-2 (alternating
   * steps), causal attention on `c_attn`'s output took 1.70 ms per call after matMul + Add and 1.48
   * ms after the product with its bias. The gradients are the products matMul's gradient computes, dx =
   * dy·op(W)ᵀ and dW = xᵀ·dy (dyᵀ·x in PyTorch's layout), and Add's db = Σ over the rows of dy. A
   * custom gradient returns all three, so dx is computed even where no one needs it (a first layer
   * over frozen embeddings): whether a gradient is asked of x itself (`tf.grad` with respect to a
   * plain tensor) cannot be known here.
   */
  private trainableAffine(input: tf.Tensor2D, bias: tf.Variable): tf.Tensor2D {
    const transposeB = !this.fanInFanOut;
    const affine = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const [x, weight, b] = inputs as [tf.Tensor2D, tf.Tensor2D, tf.Tensor1D];
      const save = inputs[3] as tf.GradSaveFunc;
      save([x]);
      return {
        value: tf.fused.matMul({ a: x, b: weight, transposeB, bias: b }),
        gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
          const [savedX] = saved as [tf.Tensor2D];
          const dy2d = dy as tf.Tensor2D;
          const dx = this.inputGradient(dy2d, weight);
          const dWeight = transposeB ? tf.matMul(dy2d, savedX, true, false) : tf.matMul(savedX, dy2d, true, false);
          return [dx, dWeight, tf.sum(dy2d, 0)];
        },
      };
    });
    return affine(input, this.weight, bias) as tf.Tensor2D;
  }

  /** dy·op(W)ᵀ: the input's gradient of `x·op(W) + b`, in either weight layout. */
  private inputGradient(dy: tf.Tensor2D, weight: tf.Tensor2D): tf.Tensor2D {
    return tf.matMul(dy, weight, false, this.fanInFanOut);
  }

  forwardWithoutBias(input: tf.Tensor): tf.Tensor {
    this.checkInput(input);
    return tf.tidy(() => applyToLastAxis(input, this.outFeatures, (x) => tf.matMul(x, this.weight as tf.Tensor2D, false, !this.fanInFanOut)));
  }

  denseWeight(): tf.Tensor2D {
    return tf.tidy(() => (this.fanInFanOut ? tf.transpose(this.weight) : tf.clone(this.weight)) as tf.Tensor2D) as tf.Tensor2D;
  }

  assignDenseWeight(weight: tf.Tensor2D): {
    /** Always true: a float32 `Linear` holds any float32 weight exactly. */
    exact: boolean;
  } {
    if (weight.shape[0] !== this.outFeatures || weight.shape[1] !== this.inFeatures) {
      throw new ShapeError('[@lora/core] Linear.assignDenseWeight', [this.outFeatures, this.inFeatures], weight.shape);
    }
    tf.tidy(() => this.weight.assign(this.fanInFanOut ? tf.transpose(weight) : weight));
    return { exact: true };
  }

  /** A copy with its own variables (same values, same trainable flags). */
  override clone(): Linear {
    const copy = new Linear({
      inFeatures: this.inFeatures,
      outFeatures: this.outFeatures,
      bias: this.bias !== null,
      fanInFanOut: this.fanInFanOut,
    });
    copy.weight.assign(this.weight);
    copy.weight.trainable = this.weight.trainable;
    if (this.bias && copy.bias) {
      copy.bias.assign(this.bias);
      copy.bias.trainable = this.bias.trainable;
    }
    copy.training = this.training;
    return copy;
  }
}
