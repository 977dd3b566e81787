import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, Linear, LoraError, Module, ShapeError, applyToLastAxis, type BaseLayer } from '@lora/core';
import { dequantized4bitTensor, fusedBiasProductIsSafe, tensorFilledBy } from '@lora/core/internal';
import { parseQuantOptions, type ComputeDtype, type QuantMergeMode } from './quant-config.js';
import { dequantize4bit } from './blockwise.js';
import { absmaxOf, dequantizeWeight, quantStateBytes, quantizeWeight, type QuantState, type QuantStateBytes } from './quant-state.js';

/** Options for {@link QuantLinear}. */
export interface QuantLinearOptions {
  /** Bias [out] (copied), or null/absent for none. */
  readonly bias?: tf.Tensor | null;
  /** See {@link QuantOptions.merge} (default `requantize`). */
  readonly merge?: QuantMergeMode;
  /** See {@link QuantOptions.keepOriginalOnMerge} (default true). */
  readonly keepOriginalOnMerge?: boolean;
  /** Recorded only: tfjs computes in float32 (default `float32`). */
  readonly computeDtype?: ComputeDtype;
  /** The module path, used in notes and errors. */
  readonly name?: string;
  /**
   * True when the layer this one replaced stored its weight [in, out] (GPT-2's Conv1D). The 4-bit
   * weight is always [out, in], as transformers transposes Conv1D before quantizing; this only decides
   * the layout of the float layer {@link QuantLinear.toLinear} returns. Default false.
   */
  readonly sourceFanInFanOut?: boolean;
}

/**
 * The state before a merge, handed to core's adapter layer ({@link QuantLinear.snapshotForMerge}) and
 * given back on unmerge, so unmerging restores the original packed bytes exactly. Holds no tensors.
 */
interface MergeSnapshot {
  readonly state: QuantState;
  /** The float32 merged weight held before this merge (merge mode `dequantize`), if any. */
  readonly floatValues: Float32Array | null;
}

/**
 * A linear layer whose weight is held in 4 bits (NF4 or FP4): packed codes in a `Uint8Array` and
 * bitsandbytes' quantization state, never a float32 copy. `forward` dequantizes the weight inside
 * `tf.tidy`, multiplies and frees it; the backward pass dequantizes again instead of keeping it
 * (like bitsandbytes' `MatMul4Bit`), so one layer's float weight exists at a time. The packed weight
 * gets no gradient; the bias is an ordinary (frozen) variable.
 *
 * It implements core's `BaseLayer`, so any adapter wraps it (QLoRA = this + LoRA). Merging an
 * adapter calls {@link QuantLinear.assignDenseWeight}, which re-quantizes (lossy, measured) or keeps
 * float32 while merged, and keeps the original bytes so that unmerging restores them exactly.
 *
 * @example
 * const layer = QuantLinear.fromLayer(new Linear({ inFeatures: 64, outFeatures: 32 }), { type: 'nf4' });
 * const y = tf.tidy(() => layer.forward(tf.ones([2, 64]))); // [2, 32]
 */
export class QuantLinear extends Module implements BaseLayer {
  /** Input width: columns of the [out, in] weight (from the quantization state's shape). */
  readonly inFeatures: number;
  /** Output width: rows of the [out, in] weight. */
  readonly outFeatures: number;
  /** Always false: the 4-bit weight is stored [out, in] whatever the source layer was. */
  readonly fanInFanOut = false;
  readonly bias: tf.Variable | null;
  /** See {@link QuantLinearOptions.sourceFanInFanOut}. */
  readonly sourceFanInFanOut: boolean;
  /** What {@link QuantLinear.assignDenseWeight} does: `requantize` (default) or `dequantize`; see {@link QuantOptions.merge}. */
  readonly mergeMode: QuantMergeMode;
  /** Keep the pre-merge packed bytes while merged so that unmerging restores them exactly (default true); false in `requantize` mode: unmerge re-quantizes, as PEFT. */
  readonly keepOriginalOnMerge: boolean;
  /** Recorded only (default `float32`): the forward pass computes in float32 whatever it is. */
  readonly computeDtype: ComputeDtype;
  /** The module path given at creation ('' if none). */
  readonly name: string;
  private current: QuantState;
  private floatWeight: tf.Variable | null = null;

  /**
   * Wrap an existing quantization state (from {@link quantizeWeight} or a checkpoint). The state's arrays
   * are used as they are, not copied; the bias is copied into a new frozen variable.
   * @throws {ConfigError} on an invalid `merge`, `keepOriginalOnMerge` or `computeDtype` (as {@link quant}
   * names them), or a state whose type, block size or buffer lengths do not hold a weight of its shape;
   * {ShapeError} when the bias is not [out].
   */
  constructor(state: QuantState, options: QuantLinearOptions = {}) {
    super();
    const { merge, keepOriginalOnMerge, computeDtype } = parseQuantOptions({
      merge: options.merge,
      keepOriginalOnMerge: options.keepOriginalOnMerge,
      computeDtype: options.computeDtype,
    });
    checkState(state, options.name);
    const [outFeatures, inFeatures] = state.shape;
    this.outFeatures = outFeatures;
    this.inFeatures = inFeatures;
    this.current = state;
    this.mergeMode = merge;
    this.keepOriginalOnMerge = keepOriginalOnMerge;
    this.computeDtype = computeDtype;
    this.name = options.name ?? '';
    this.sourceFanInFanOut = options.sourceFanInFanOut ?? false;
    const bias = options.bias ?? null;
    if (bias) {
      if (bias.rank !== 1 || bias.shape[0] !== outFeatures) {
        throw new ShapeError(`[@lora/quant] QuantLinear${this.label()} bias`, [outFeatures], bias.shape);
      }
      // A fresh variable: the caller keeps (and disposes) the tensor it passed.
      const copy = tf.clone(bias);
      this.bias = this.registerParameter('bias', copy, { trainable: false });
      copy.dispose();
    } else {
      this.bias = null;
    }
  }

  /**
   * Quantize a layer (a core `Linear` or any `BaseLayer`): its dense [out, in] weight is read once and
   * packed; the bias is copied. The source layer is not changed or disposed.
   * @throws {ConfigError} on an invalid option (checked as {@link quant} checks them, before the weight is read);
   * {LoraError} when the weight holds NaN or infinity.
   */
  static fromLayer(
    layer: BaseLayer,
    options: {
      readonly type?: QuantState['quantType'];
      readonly blockSize?: number;
      readonly doubleQuant?: boolean;
    } & Omit<QuantLinearOptions, 'bias' | 'sourceFanInFanOut'> = {},
  ): QuantLinear {
    // Every option checked before the weight is read back (quantizeWeight and the constructor check again).
    parseQuantOptions({
      type: options.type,
      blockSize: options.blockSize,
      doubleQuant: options.doubleQuant,
      merge: options.merge,
      keepOriginalOnMerge: options.keepOriginalOnMerge,
      computeDtype: options.computeDtype,
    });
    const dense = layer.denseWeight();
    let values: Float32Array;
    try {
      values = dense.dataSync() as Float32Array;
    } finally {
      dense.dispose();
    }
    const state = quantizeWeight(values, [layer.outFeatures, layer.inFeatures], {
      type: options.type,
      blockSize: options.blockSize,
      doubleQuant: options.doubleQuant,
      name: options.name,
    });
    return new QuantLinear(state, { ...options, bias: layer.bias, sourceFanInFanOut: layer.fanInFanOut });
  }

  private label(): string {
    return this.name ? ` "${this.name}"` : '';
  }

  /** The quantization state (packed codes and statistics). Do not mutate its arrays. */
  get quantState(): QuantState {
    return this.current;
  }

  /** True while a float32 merged weight is held (merge mode `dequantize`). */
  get holdsFloatWeight(): boolean {
    return this.floatWeight !== null;
  }

  /** Bytes of the buffers this layer holds, by part (tables are shared constants when unchanged). */
  storageBytes(): QuantStateBytes & {
    /** Bytes of the float32 merged weight (merge mode `dequantize`), 0 when none is held. */
    readonly floatWeight: number;
  } {
    return { ...quantStateBytes(this.current), floatWeight: this.floatWeight ? this.floatWeight.size * 4 : 0 };
  }

  /** The weights this layer stores outside variables (the packed 4-bit weight), for parameter counts. */
  override storedParameterCount(): number {
    return this.floatWeight ? 0 : this.inFeatures * this.outFeatures;
  }

  /**
   * Core's adapter layer calls this before merging: the current packed state (and float weight, if
   * merged in `dequantize` mode), so {@link QuantLinear.restoreSnapshot} can return to it bit for bit.
   * Returns undefined with `keepOriginalOnMerge: false` in `requantize` mode (unmerge then
   * re-quantizes, as PEFT does).
   */
  snapshotForMerge(): unknown {
    if (!this.keepOriginalOnMerge && this.mergeMode === 'requantize') return undefined;
    const snapshot: MergeSnapshot = { state: this.current, floatValues: this.floatWeight ? (this.floatWeight.dataSync() as Float32Array).slice() : null };
    return snapshot;
  }

  /** Return to a state captured by {@link QuantLinear.snapshotForMerge} (exact unmerge). */
  restoreSnapshot(snapshot: unknown): void {
    const { state, floatValues } = snapshot as MergeSnapshot;
    this.current = state;
    this.floatWeight?.dispose();
    this.floatWeight = floatValues ? tf.tidy(() => tf.variable(tf.tensor2d(floatValues, [this.outFeatures, this.inFeatures]), false)) : null;
  }

  private checkInput(input: tf.Tensor): void {
    this.throwIfDisposed(`[@lora/quant] QuantLinear${this.label()}`);
    if (input.shape[input.rank - 1] !== this.inFeatures) {
      throw new ShapeError(`[@lora/quant] QuantLinear${this.label()} input`, [null, this.inFeatures], input.shape);
    }
  }

  /**
   * The dense weight [out, in] as a new tensor (dequantized, or the merged float weight), dequantized
   * straight into the tensor's memory (see {@link QuantLinear.dequantized}).
   */
  private weightTensor(state: QuantState): tf.Tensor2D {
    if (this.floatWeight) return tf.clone(this.floatWeight) as tf.Tensor2D;
    return this.dequantized(state, [this.outFeatures, this.inFeatures]) as tf.Tensor2D;
  }

  /**
   * The dequantized weight as a new tensor of `shape` (its size out·in): on WASM by core's SIMD
   * kernel in the tensor's heap memory (`dequantized4bitTensor`), elsewhere by
   * {@link dequantize4bit}'s loop (into core's `tensorFilledBy`); the same values bit for bit.
   */
  private dequantized(state: QuantState, shape: number[]): tf.Tensor {
    const codes = { packed: state.packed, absmax: absmaxOf(state), code: state.quantMap, blockSize: state.blockSize };
    return dequantized4bitTensor(shape, codes) ?? tensorFilledBy(shape, (values) => void dequantize4bit(codes.packed, codes.absmax, { code: codes.code, blockSize: codes.blockSize, length: values.length, out: values }));
  }

  /** `x·Wᵀ`, plus `bias` when given (a frozen bias, added inside the product). */
  private matMulTransposed(x: tf.Tensor2D, bias: tf.Tensor | null): tf.Tensor2D {
    if (this.floatWeight) {
      const weight = this.floatWeight as tf.Tensor2D;
      return bias === null ? tf.matMul(x, weight, false, true) : (tf.fused.matMul({ a: x, b: weight, transposeB: true, bias }) as tf.Tensor2D);
    }
    const state = this.current;
    const [rows, inFeatures] = x.shape;
    // The gradient to x re-dequantizes the weight instead of letting the tape keep it alive; the
    // bias, frozen, gets none.
    const multiply = tf.customGrad((...inputs: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const input = inputs[0] as tf.Tensor2D;
      const value = tf.tidy(() => {
        if (bias === null) return tf.matMul(input, this.weightTensor(state), false, true);
        // The fused kernel itself, on the 3-D operands tf.fused.matMul would reshape to, with the
        // weight dequantized 3-D: reshaping it would make a second tensor of the same buffer, whose
        // bytes tfjs counts again (a phantom weight in measurePeakTensorBytes and tf.memory()).
        const weight = this.dequantized(state, [1, this.outFeatures, inFeatures]);
        const attrs = { transposeA: false, transposeB: true, activation: 'linear', leakyreluAlpha: 0.2 };
        const product = tf.engine().runKernel('_FusedMatMul', { a: tf.reshape(input, [1, rows, inFeatures]), b: weight, bias }, attrs) as tf.Tensor;
        return tf.reshape(product, [rows, this.outFeatures]) as tf.Tensor2D;
      });
      return {
        value,
        gradFunc: (dy: tf.Tensor) => tf.tidy(() => tf.matMul(dy as tf.Tensor2D, this.weightTensor(state))),
      };
    });
    return multiply(x) as tf.Tensor2D;
  }

  /**
   * `x·Wᵀ + b` with W dequantized for this call only. A frozen bias is added inside the product (one
   * kernel instead of a product and an Add over the whole output) where the backend's fused product
   * is right (see core's `fusedBiasProductIsSafe`); a trainable one by an Add, which gives its gradient.
   */
  forward(input: tf.Tensor): tf.Tensor {
    this.checkInput(input);
    return tf.tidy(() => {
      const inside = this.bias !== null && !this.bias.trainable && fusedBiasProductIsSafe() ? this.bias : null;
      const output = applyToLastAxis(input, this.outFeatures, (x) => this.matMulTransposed(x, inside));
      return this.bias && inside === null ? tf.add(output, this.bias) : output;
    });
  }

  /** `x·Wᵀ` without the bias. */
  forwardWithoutBias(input: tf.Tensor): tf.Tensor {
    this.checkInput(input);
    return tf.tidy(() => applyToLastAxis(input, this.outFeatures, (x) => this.matMulTransposed(x, null)));
  }

  /** The dequantized weight as a new dense float32 [out, in] tensor. The caller disposes it. */
  denseWeight(): tf.Tensor2D {
    return this.weightTensor(this.current);
  }

  /**
   * Replace the weight with a dense [out, in] tensor (not taken over). Adapter merging calls this.
   *
   * - In merge mode `requantize` (default) the weight is quantized again (same type, block size and
   *   double quantization): `exact: false` with a note giving the max and mean absolute error.
   *   Unmerging through core's adapter layer restores the pre-merge bytes exactly from
   *   {@link QuantLinear.snapshotForMerge} (unless `keepOriginalOnMerge: false`).
   * - In merge mode `dequantize` the weight is held in float32: `exact: true`.
   *
   * @throws {ShapeError} on a wrong shape; {LoraError} on a non-finite value.
   */
  assignDenseWeight(weight: tf.Tensor2D): {
    /** True when the layer now holds the weight exactly (merge mode `dequantize`), false when re-quantized. */
    readonly exact: boolean;
    /** With `exact: false`: the max and mean absolute re-quantization error and how to unmerge or merge exactly. */
    readonly note?: string;
  } {
    if (weight.shape[0] !== this.outFeatures || weight.shape[1] !== this.inFeatures) {
      throw new ShapeError(`[@lora/quant] QuantLinear${this.label()}.assignDenseWeight`, [this.outFeatures, this.inFeatures], weight.shape);
    }
    const values = weight.dataSync() as Float32Array;
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i]!)) {
        throw new LoraError(
          `[@lora/quant] QuantLinear${this.label()}: the weight to assign has ${values[i]} at element ${i}; the 4-bit weight was not changed.`,
          { plugin: '@lora/quant' },
        );
      }
    }
    if (this.mergeMode === 'dequantize') {
      if (this.floatWeight) this.floatWeight.assign(weight);
      else this.floatWeight = tf.variable(weight, false);
      return { exact: true };
    }
    const next = quantizeWeight(values, [this.outFeatures, this.inFeatures], {
      type: this.current.quantType,
      blockSize: this.current.blockSize,
      doubleQuant: this.current.nested !== null,
      nestedBlockSize: this.current.nested?.blockSize,
      dtype: this.current.dtype,
      name: this.name,
    });
    const restored = dequantizeWeight(next);
    let maxError = 0;
    let sumError = 0;
    for (let i = 0; i < values.length; i++) {
      const error = Math.abs(restored[i]! - values[i]!);
      sumError += error;
      if (error > maxError) maxError = error;
    }
    this.current = next;
    this.floatWeight?.dispose();
    this.floatWeight = null;
    const meanError = sumError / Math.max(1, values.length);
    return {
      exact: false,
      note:
        `[@lora/quant] ${this.name || 'QuantLinear'}: the merged weight was re-quantized to ${next.quantType} (lossy): ` +
        `max |error| ${maxError.toPrecision(3)}, mean |error| ${meanError.toPrecision(3)}. ` +
        (this.keepOriginalOnMerge
          ? 'The original 4-bit weight is kept, so unmerge() restores it exactly.'
          : 'Unmerging will re-quantize again (not exact).') +
        " For an exact merged model use mergeAndDequantize() or quant({ merge: 'dequantize' }).",
    };
  }

  /**
   * A float32 core `Linear` with the dequantized (or merged float) weight and a copy of the bias, in the
   * source layer's layout (`fanInFanOut` for a former Conv1D). This layer is not changed.
   */
  toLinear(): Linear {
    return Linear.fromBaseLayer(this, { fanInFanOut: this.sourceFanInFanOut });
  }

  /** Free the bias and any float weight; the packed bytes are released to the garbage collector. */
  override dispose(): void {
    super.dispose();
    this.floatWeight?.dispose();
    this.floatWeight = null;
  }
}

/**
 * A state the layer can dequantize: a known type and one of bitsandbytes' block sizes (so it can also be
 * saved and loaded back), and buffers as long as its shape needs (else dequantizing reads past them).
 */
function checkState(state: QuantState, name: string | undefined): void {
  parseQuantOptions({ type: state.quantType, blockSize: state.blockSize });
  const [outFeatures, inFeatures] = state.shape;
  const where = name ? ` of "${name}"` : '';
  if (!(Number.isSafeInteger(outFeatures) && outFeatures > 0 && Number.isSafeInteger(inFeatures) && inFeatures > 0)) {
    throw new ConfigError({ plugin: '@lora/quant', field: 'state.shape', received: state.shape, expected: `[out, in] with positive integers${where}`, hint: 'Make the state with quantizeWeight().' });
  }
  const elements = outFeatures * inFeatures;
  const blocks = Math.ceil(elements / state.blockSize);
  const absmaxLength = state.nested ? state.nested.codes.length : (state.absmax?.length ?? 0);
  const lengths: [string, number, number][] = [
    ['state.packed.length', state.packed.length, Math.ceil(elements / 2)],
    [state.nested ? 'state.nested.codes.length' : 'state.absmax.length', absmaxLength, blocks],
    ['state.quantMap.length', state.quantMap.length, 16],
  ];
  for (const [field, received, expected] of lengths) {
    if (received !== expected) {
      throw new ConfigError({
        plugin: '@lora/quant',
        field,
        received,
        expected: `${expected} for shape [${outFeatures}, ${inFeatures}] in blocks of ${state.blockSize}${where}`,
        hint: 'The state does not describe a weight of its shape; make it with quantizeWeight() or read it with quantStateFromEntries().',
      });
    }
  }
}

/** True when `module` is a {@link QuantLinear}. */
export function isQuantLinear(module: unknown): module is QuantLinear {
  return module instanceof QuantLinear;
}
