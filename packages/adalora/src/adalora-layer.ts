import * as tf from '@tensorflow/tfjs-core';
import { applyToLastAxis, CheckpointError, dropout, Linear, type AdapterInstance, type ApplyContext } from '@lora/core';
import { lowRankLinearTrain, normalSeed } from '@lora/core/internal';

/** Options for {@link AdaLoraAdapter}. */
export interface AdaLoraAdapterOptions {
  /** Input features of the wrapped layer. */
  readonly inFeatures: number;
  /** Output features of the wrapped layer. */
  readonly outFeatures: number;
  /** The config's `initR`: PEFT's `ranknum`, the scaling denominator, which never changes (not even after pruning or reloading). */
  readonly initR: number;
  /** The scaling numerator (`loraAlpha`; `initR` when ≤ 0, as PEFT). */
  readonly loraAlpha: number;
  /** Dropout on the adapter input in training mode (default 0). */
  readonly dropout?: number;
  /** As `initLoraWeights` (default true: E = 0, A and B ~ N(0, 0.02); false: all ~ N(0, 1)). */
  readonly init?: boolean | 'gaussian';
  /** Seed for A (B uses seed + 1, E seed + 2). Default: unseeded. */
  readonly seed?: number;
  /**
   * This module's saved rank pattern (PEFT's `rank_pattern[<path>.lora_E]`): the adapter is built
   * with one row per `true` entry, as PEFT's `resize_modules_by_rank_pattern`. Default: all
   * `initR` slots.
   */
  readonly rankPattern?: readonly boolean[];
  /** Rank growth: only the first `liveRows` slots start live, the rest dormant (all zero). Default: all live. */
  readonly liveRows?: number;
}

/** Which rows a saved rank pattern marks: the allocator's kept triplets, or every row the adapter holds. */
export type RankPatternForm = 'pruned' | 'physical';

/** The three factors of one module, as the allocator reads them. */
export interface AdaLoraFactors {
  /** Q, [rows, in]. */
  readonly lora_A: tf.Variable;
  /** Λ, [rows, 1]. */
  readonly lora_E: tf.Variable;
  /** P, [out, rows]. */
  readonly lora_B: tf.Variable;
}

const NAMES = ['lora_A', 'lora_B', 'lora_E'] as const;

/**
 * AdaLoRA's SVD-form adapter on one layer (PEFT's `SVDLinear`): Q = `lora_A` [r, in], Λ = `lora_E`
 * [r, 1], P = `lora_B` [out, r], adding `((x·(Q ⊙ Λ)ᵀ)·Pᵀ) · alpha / (initR + 1e-5)` in PEFT's
 * order of operations. Pruning zeroes entries of Λ; the scaling keeps `initR` throughout, as PEFT's
 * `ranknum`.
 *
 * Rows are triplet slots. A row can be dormant (rank growth: all zero, contributes nothing, gets
 * no gradient) or live; a live row is kept or pruned by the last allocation. Each row remembers
 * its index in the module's rank pattern, so an adapter loaded at its pruned rank saves the same
 * pattern again.
 *
 * Tensors returned by its methods are owned by the caller unless stated.
 */
export class AdaLoraAdapter implements AdapterInstance {
  /** Marks AdaLoRA adapters (duck-typed, robust across duplicate package copies). */
  readonly adapterKind = 'adalora' as const;
  /** Input features of the wrapped layer. */
  readonly inFeatures: number;
  /** Output features of the wrapped layer. */
  readonly outFeatures: number;
  /** The config's initR (PEFT's ranknum). */
  readonly initR: number;
  /** The config's loraAlpha. */
  readonly loraAlpha: number;
  /** Dropout rate on the adapter input in training mode. */
  readonly dropout: number;
  /** PEFT's `scaling`: alpha, or initR when alpha ≤ 0. */
  readonly scalingNumerator: number;
  /** PEFT's `ranknum + 1e-5` as the float32 it is in PyTorch. */
  readonly ranknumPlusEpsilon: number;
  private a: tf.Variable;
  private e: tf.Variable;
  private b: tf.Variable;
  private slots: number[];
  private patternLength: number;
  private live: boolean[];
  private keep: boolean[] | null = null;
  private disposedFlag = false;
  private readonly disposeListeners = new Set<() => void>();

  constructor(options: AdaLoraAdapterOptions) {
    this.inFeatures = options.inFeatures;
    this.outFeatures = options.outFeatures;
    this.initR = options.initR;
    this.loraAlpha = options.loraAlpha;
    this.dropout = options.dropout ?? 0;
    this.scalingNumerator = options.loraAlpha > 0 ? options.loraAlpha : options.initR;
    this.ranknumPlusEpsilon = Math.fround(options.initR + 1e-5);
    const pattern = options.rankPattern;
    this.patternLength = pattern ? pattern.length : options.initR;
    this.slots = pattern ? pattern.flatMap((kept, index) => (kept ? [index] : [])) : Array.from({ length: options.initR }, (_, i) => i);
    const rows = this.slots.length;
    const liveRows = Math.min(options.liveRows ?? rows, rows);
    this.live = Array.from({ length: rows }, (_, i) => i < liveRows);
    const init = options.init ?? true;
    const seed = options.seed;
    const at = (offset: number): number | undefined => normalSeed(seed === undefined ? undefined : seed + offset);
    const std = init === false ? 1 : 0.02;
    const values = tf.tidy(() => {
      const a = onlyRows(tf.randomNormal([rows, this.inFeatures], 0, std, 'float32', at(0)), this.live, 0);
      const b = onlyRows(tf.randomNormal([this.outFeatures, rows], 0, std, 'float32', at(1)), this.live, 1);
      const e = init === false ? onlyRows(tf.randomNormal([rows, 1], 0, 1, 'float32', at(2)), this.live, 0) : tf.zeros([rows, 1]);
      return [a, e, b];
    });
    this.a = tf.variable(values[0]!, true);
    this.e = tf.variable(values[1]!, true);
    this.b = tf.variable(values[2]!, true);
    tf.dispose(values);
  }

  /** Q [rows, in]. Owned by the adapter. */
  get loraA(): tf.Variable {
    return this.a;
  }

  /** Λ [rows, 1]. Owned by the adapter. */
  get loraE(): tf.Variable {
    return this.e;
  }

  /** P [out, rows]. Owned by the adapter. */
  get loraB(): tf.Variable {
    return this.b;
  }

  /** The three factors, for the allocator. */
  factors(): AdaLoraFactors {
    return { lora_A: this.a, lora_E: this.e, lora_B: this.b };
  }

  /** Rows held (triplet slots, dormant included). */
  get rows(): number {
    return this.slots.length;
  }

  /** The current rank: live rows not pruned by the last allocation. */
  get rank(): number {
    let count = 0;
    for (let i = 0; i < this.rows; i++) if (this.isKept(i)) count += 1;
    return count;
  }

  /** Whether the adapter was disposed. */
  get disposed(): boolean {
    // Core's Module.dispose frees the variables directly, without calling dispose() here.
    return this.disposedFlag || this.a.isDisposed;
  }

  /** Per row: live (not dormant). A copy. */
  liveRows(): boolean[] {
    return [...this.live];
  }

  /** Per row: kept by the last allocation (true for every live row before any). A copy. */
  keptRows(): boolean[] {
    return this.live.map((_, i) => this.isKept(i));
  }

  /** Whether any allocation has set a mask on this adapter. */
  get allocated(): boolean {
    return this.keep !== null;
  }

  /**
   * The row flags a trainer checkpoint keeps (copies): which rows are live, and the last
   * allocation's mask (null before any). Λ itself is a weight and travels with the weights.
   */
  rowState(): {
    /** Per row: live (false while dormant, i.e. not yet grown). */
    live: boolean[];
    /** Per row: the last allocation's keep mask as set, or null before any allocation. */
    keep: boolean[] | null;
  } {
    return { live: [...this.live], keep: this.keep ? [...this.keep] : null };
  }

  /**
   * Put back flags from {@link AdaLoraAdapter.rowState} (a resumed run). The values of A, Λ and B
   * are not touched: they are loaded with the weights.
   * @throws {RangeError} when a flag array's length is not the number of rows.
   */
  restoreRowState(state: { readonly live: readonly boolean[]; readonly keep: readonly boolean[] | null }): void {
    if (state.live.length !== this.rows || (state.keep !== null && state.keep.length !== this.rows)) {
      throw new RangeError(`[adalora] row flags of length ${state.live.length}/${state.keep?.length ?? 'null'} for ${this.rows} rows.`);
    }
    this.live = [...state.live];
    this.keep = state.keep ? [...state.keep] : null;
  }

  private isKept(row: number): boolean {
    return this.live[row]! && (this.keep?.[row] ?? true);
  }

  /** `lora_A`, `lora_B`, `lora_E` (PEFT's saved names, no `.weight`), owned by the adapter. */
  namedTensors(): [string, tf.Variable][] {
    return [
      ['lora_A', this.a],
      ['lora_B', this.b],
      ['lora_E', this.e],
    ];
  }

  /** `result + ((dropout(x)·(A ⊙ E)ᵀ)·Bᵀ)·alpha/(initR + 1e-5)`, PEFT's order of operations. The caller disposes the result. */
  apply(input: tf.Tensor, result: tf.Tensor, context: ApplyContext): tf.Tensor {
    // A rank-0 module adds nothing (PEFT adds an all-zero product); XNNPACK rejects k = 0 matMuls.
    if (this.rows === 0) return result;
    return tf.tidy(() => {
      const x = context.training && this.dropout > 0 ? dropout(input, this.dropout) : input;
      const scaledA = tf.mul(this.a, this.e) as tf.Tensor2D;
      const delta = applyToLastAxis(x, this.outFeatures, (m) => tf.matMul(tf.matMul(m, scaledA, false, true), this.b as tf.Tensor2D, false, true));
      return tf.add(result, tf.div(tf.mul(delta, this.scalingNumerator), this.ranknumPlusEpsilon));
    });
  }

  /**
   * The base layer (core's `Linear`) and this adapter in one fused kernel each way where the backend
   * has them (core's `lowRankLinearTrain`, LoRA's layer kernels with Q ⊙ Λ as the down-projection and
   * alpha / (initR + 1e-5) as one scaling): equal to {@link AdaLoraAdapter.apply} after the base up to
   * float32 rounding (PEFT multiplies by alpha, then divides). Null (the base runs, then `apply`) for
   * any other base, a rank-0 module, or a backend without the kernels.
   */
  applyWithBase(input: tf.Tensor, context: ApplyContext): tf.Tensor | null {
    const base = context.base;
    if (this.rows === 0 || !(base instanceof Linear)) return null;
    const adapterInput = context.training && this.dropout > 0 ? () => dropout(input, this.dropout) : undefined;
    // Recorded on the tape (Q and Λ get their gradients through it); the fused kernel keeps its own copy.
    const scaledA = tf.mul(this.a, this.e);
    try {
      return lowRankLinearTrain(input, base, scaledA, this.b, this.scalingNumerator / this.ranknumPlusEpsilon, adapterInput);
    } finally {
      scaledA.dispose();
    }
  }

  /** ΔW = P·(Q ⊙ Λ) · alpha / (initR + 1e-5), dense [out, in]. The caller disposes it. */
  deltaWeight(): tf.Tensor2D {
    if (this.rows === 0) return tf.zeros([this.outFeatures, this.inFeatures]);
    return tf.tidy(() =>
      tf.div(tf.mul(tf.matMul(this.b as tf.Tensor2D, tf.mul(this.a, this.e) as tf.Tensor2D), this.scalingNumerator), this.ranknumPlusEpsilon),
    );
  }

  /**
   * Load saved `lora_A` [k, in], `lora_E` [k, 1], `lora_B` [out, k]. When k differs from the rows
   * held (a file whose config has no rank pattern for this module), the adapter is resized to k, as
   * PEFT resizes to the saved rank; the scaling keeps `initR`.
   * @throws {CheckpointError} when the three shapes do not agree with each other or with the layer.
   */
  loadTensors(tensors: ReadonlyMap<string, tf.Tensor>): void {
    const a = tensors.get('lora_A');
    const e = tensors.get('lora_E');
    const b = tensors.get('lora_B');
    if (!a || !e || !b) {
      throw new CheckpointError('[adalora] An AdaLoRA module needs lora_A, lora_E and lora_B.', {
        plugin: 'adalora',
        missing: NAMES.filter((name) => !tensors.has(name)),
      });
    }
    const k = a.shape[0] ?? -1;
    const mismatched: { name: string; expected: number[]; received: number[] }[] = [];
    const check = (name: string, tensor: tf.Tensor, expected: number[]): void => {
      if (tensor.shape.length !== expected.length || tensor.shape.some((d, i) => d !== expected[i])) {
        mismatched.push({ name, expected, received: [...tensor.shape] });
      }
    };
    check('lora_A', a, [k, this.inFeatures]);
    check('lora_E', e, [k, 1]);
    check('lora_B', b, [this.outFeatures, k]);
    if (mismatched.length > 0) {
      throw new CheckpointError(
        `[adalora] Saved AdaLoRA tensors do not fit this layer (in ${this.inFeatures}, out ${this.outFeatures}): ${mismatched
          .map((m) => `${m.name} expected [${m.expected.join(', ')}], file has [${m.received.join(', ')}]`)
          .join('; ')}.`,
        { plugin: 'adalora', mismatched },
      );
    }
    if (k === this.rows) {
      this.a.assign(a);
      this.e.assign(e);
      this.b.assign(b);
      return;
    }
    this.replaceVariables(a, e, b);
    this.slots = Array.from({ length: k }, (_, i) => i);
    this.patternLength = Math.max(this.initR, k);
    this.live = new Array<boolean>(k).fill(true);
    this.keep = null;
  }

  private replaceVariables(a: tf.Tensor, e: tf.Tensor, b: tf.Tensor): void {
    const next = [tf.variable(a, this.a.trainable), tf.variable(e, this.e.trainable), tf.variable(b, this.b.trainable)];
    tf.dispose([this.a, this.e, this.b]);
    [this.a, this.e, this.b] = next as [tf.Variable, tf.Variable, tf.Variable];
  }

  /**
   * The rank pattern this module saves, indexed as PEFT's (length `initR`, or the loaded pattern's
   * length): `pruned` marks the live rows the last allocation kept (PEFT's `rank_pattern`),
   * `physical` marks every row the adapter holds.
   */
  rankPattern(form: RankPatternForm): boolean[] {
    const pattern = new Array<boolean>(this.patternLength).fill(false);
    this.slots.forEach((slot, row) => {
      pattern[slot] = form === 'physical' ? true : this.isKept(row);
    });
    return pattern;
  }

  /** Core's save hook: the pruned tensors PEFT writes ({@link AdaLoraAdapter.savedTensors}). */
  tensorsForSave(): [string, tf.Tensor][] {
    return this.savedTensors();
  }

  /**
   * The tensors PEFT saves for this module: only the kept rows of A and E and columns of B, in
   * their original order (PEFT's `resize_state_dict_by_rank_pattern`). A module with no kept row
   * gives zero-size tensors ([0, in], [0, 1], [out, 0]). The caller disposes them.
   */
  savedTensors(): [string, tf.Tensor][] {
    const kept = this.live.flatMap((_, row) => (this.isKept(row) ? [row] : []));
    return tf.tidy(() => {
      if (kept.length === this.rows) {
        return [
          ['lora_A', tf.clone(this.a)],
          ['lora_B', tf.clone(this.b)],
          ['lora_E', tf.clone(this.e)],
        ];
      }
      if (kept.length === 0) {
        return [
          ['lora_A', tf.zeros([0, this.inFeatures])],
          ['lora_B', tf.zeros([this.outFeatures, 0])],
          ['lora_E', tf.zeros([0, 1])],
        ];
      }
      const index = tf.tensor1d(kept, 'int32');
      return [
        ['lora_A', tf.gather(this.a, index, 0)],
        ['lora_B', tf.gather(this.b, index, 1)],
        ['lora_E', tf.gather(this.e, index, 0)],
      ];
    });
  }

  /**
   * Set the allocation mask (one flag per row) and zero Λ where it is false, as PEFT's
   * `masked_fill_`. A and B are left alone, so a pruned triplet can come back at a later allocation.
   */
  applyMask(keep: readonly boolean[]): void {
    if (keep.length !== this.rows) throw new RangeError(`[adalora] mask has ${keep.length} entries for ${this.rows} rows.`);
    this.keep = [...keep];
    this.zeroUnkept();
  }

  /** Zero Λ again for every row the current mask prunes (PEFT's `mask_using_rank_pattern`). */
  reapplyMask(): void {
    if (this.keep) this.zeroUnkept();
  }

  private zeroUnkept(): void {
    if (this.rows === 0) return;
    const mask = this.live.map((_, row) => this.isKept(row));
    if (mask.every(Boolean)) return;
    // tf.where, not a product: masked_fill_ writes +0, a product would give −0 for negative entries.
    tf.tidy(() => this.e.assign(tf.where(tf.tensor2d(mask, [this.rows, 1], 'bool'), this.e, tf.zerosLike(this.e))));
  }

  /** Rows that are dormant (rank growth), in order. */
  dormantRows(): number[] {
    return this.live.flatMap((on, row) => (on ? [] : [row]));
  }

  /**
   * Make dormant rows live: A rows and B columns drawn as PEFT initialises them (N(0, 0.02)), Λ
   * stays 0, so the layer's output is unchanged. The rows count as kept.
   * @returns the rows grown.
   */
  grow(rows: readonly number[], seed?: number): number[] {
    const grown = rows.filter((row) => row >= 0 && row < this.rows && !this.live[row]);
    if (grown.length === 0) return [];
    tf.tidy(() => {
      const selected = this.live.map((_, row) => grown.includes(row));
      const freshA = tf.randomNormal([this.rows, this.inFeatures], 0, 0.02, 'float32', normalSeed(seed));
      const freshB = tf.randomNormal([this.outFeatures, this.rows], 0, 0.02, 'float32', normalSeed(seed === undefined ? undefined : seed + 1));
      const column = tf.tensor2d(selected, [this.rows, 1], 'bool');
      this.a.assign(tf.where(tf.broadcastTo(column, this.a.shape), freshA, this.a));
      this.b.assign(tf.where(tf.broadcastTo(tf.reshape(column, [1, this.rows]), this.b.shape), freshB, this.b));
      this.e.assign(tf.where(column, tf.zerosLike(this.e), this.e));
    });
    for (const row of grown) {
      this.live[row] = true;
      if (this.keep) this.keep[row] = true;
    }
    return grown;
  }

  /**
   * The two orthogonality residuals of this module, `‖A·Aᵀ − I‖` and `‖Bᵀ·B − I‖` (Frobenius;
   * squared when `squared`), computed on the tape so they can be differentiated. Dormant rows are
   * left out of I (they are zero and stay so). Null for a rank-0 module. The caller disposes them.
   */
  orthogonalResiduals(options: { squared: boolean }): [tf.Scalar, tf.Scalar] | null {
    if (this.rows === 0) return null;
    return tf.tidy(() => {
      const identity = this.live.every(Boolean) ? tf.eye(this.rows) : tf.diag(tf.tensor1d(this.live.map((on) => (on ? 1 : 0))));
      const residual = (m: tf.Tensor): tf.Scalar => {
        const squares = tf.sum(tf.square(tf.sub(m, identity))) as tf.Scalar;
        return options.squared ? squares : (tf.sqrt(squares) as tf.Scalar);
      };
      const pair: [tf.Scalar, tf.Scalar] = [
        residual(tf.matMul(this.a as tf.Tensor2D, this.a as tf.Tensor2D, false, true)),
        residual(tf.matMul(this.b as tf.Tensor2D, this.b as tf.Tensor2D, true, false)),
      ];
      return pair;
    }) as [tf.Scalar, tf.Scalar];
  }

  /**
   * Call `listener` when this adapter is disposed (the rank allocator frees its importance state
   * for the module then). Returns a function that removes the listener.
   */
  onDispose(listener: () => void): () => void {
    this.disposeListeners.add(listener);
    return () => this.disposeListeners.delete(listener);
  }

  /** Free the three variables and notify {@link AdaLoraAdapter.onDispose} listeners (idempotent). */
  dispose(): void {
    if (this.disposedFlag) return;
    tf.dispose([this.a, this.e, this.b]);
    this.disposedFlag = true;
    for (const listener of this.disposeListeners) listener();
    this.disposeListeners.clear();
  }
}

/** `values` with the rows (axis 0) or columns (axis 1) not flagged in `keep` set to +0. */
function onlyRows(values: tf.Tensor, keep: readonly boolean[], axis: 0 | 1): tf.Tensor {
  if (keep.every(Boolean)) return values;
  const flags = tf.tensor2d([...keep], axis === 0 ? [keep.length, 1] : [1, keep.length], 'bool');
  return tf.where(tf.broadcastTo(flags, values.shape), values, tf.zerosLike(values));
}

/** Whether an adapter instance is an {@link AdaLoraAdapter}. */
export function isAdaLoraAdapter(instance: AdapterInstance | undefined): instance is AdaLoraAdapter {
  return (instance as Partial<AdaLoraAdapter> | undefined)?.adapterKind === 'adalora';
}
