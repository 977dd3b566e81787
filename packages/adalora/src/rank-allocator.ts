import * as tf from '@tensorflow/tfjs-core';
import { TrainingError, type TrainingHookState } from '@lora/core';
import { hookStateError, sensitivityUpdate } from '@lora/core/internal';
import type { AdaLoraConfig, AdaLoraGrowthOptions } from './adalora-config.js';
import type { AdaLoraAdapter, AdaLoraFactors } from './adalora-layer.js';
import { importanceTensorName, parseAllocatorCheckpoint, scheduleOf, type AllocatorCheckpointJson } from './allocator-checkpoint.js';

/** Inputs of {@link budgetSchedule}: PEFT's `RankAllocator` fields. */
export interface BudgetScheduleOptions {
  /** PEFT's `init_bgt`: rows of every module's A at the start (Σ initR). */
  readonly initialBudget: number;
  /** PEFT's `target_bgt`: targetR × number of modules. */
  readonly targetBudget: number;
  /** Warm-up steps (no masking while step ≤ tinit). */
  readonly tinit: number;
  /** Length of the final phase. */
  readonly tfinal: number;
  /** Total optimizer steps. */
  readonly totalStep: number;
  /** Mask every deltaT steps in the cubic phase. */
  readonly deltaT: number;
}

/** Where a global step falls in the budget schedule. */
export type AllocationPhase = 'warmup' | 'budgeting' | 'final' | 'fixed';

/**
 * PEFT's `RankAllocator.budget_schedule` for a 0-based global step:
 * - `step ≤ tinit`: the initial budget, no masking (warm-up);
 * - `step > totalStep − tfinal`: the target budget, masking;
 * - otherwise the cubic decrease `trunc((init − target)·(1 − (step − tinit)/(totalStep − tfinal − tinit))³ + target)`,
 *   masking only when `step % deltaT === 0`.
 *
 * @example
 * budgetSchedule(3, { initialBudget: 12, targetBudget: 4, tinit: 2, tfinal: 3, totalStep: 12, deltaT: 1 }); // { budget: 9, mask: true }
 */
export function budgetSchedule(step: number, options: BudgetScheduleOptions): {
  /** Triplets (rows of Λ) to keep over all modules at this step. */
  budget: number;
  /** Whether to mask to `budget` at this step (false during warm-up and between `deltaT` steps). */
  mask: boolean;
} {
  const { initialBudget, targetBudget, tinit, tfinal, totalStep, deltaT } = options;
  if (step <= tinit) return { budget: initialBudget, mask: false };
  if (step > totalStep - tfinal) return { budget: targetBudget, mask: true };
  const coefficient = 1 - (step - tinit) / (totalStep - tfinal - tinit);
  // Python's int() truncates toward zero.
  const budget = Math.trunc((initialBudget - targetBudget) * coefficient ** 3 + targetBudget);
  return { budget, mask: step % deltaT === 0 };
}

/** One step of a {@link RankHistory}. */
export interface RankHistoryEntry {
  /** PEFT's 0-based global step. */
  readonly step: number;
  /** `warmup` (step ≤ tinit), `budgeting` (cubic schedule), `final` (step = totalStep − tfinal: pattern fixed) or `fixed` (after it). */
  readonly phase: AllocationPhase;
  /** The scheduled budget at this step. */
  readonly budget: number;
  /** Whether the budget was (re)allocated at this step. */
  readonly masked: boolean;
  /** Modules that grew at this step (rank growth), with the number of triplets each gained. */
  readonly grown: Readonly<Record<string, number>>;
  /** Rank of each module after this step (live triplets not pruned), by module path. */
  readonly ranks: Readonly<Record<string, number>>;
  /** Σ ranks. */
  readonly total: number;
}

/** How the rank budget moved during training, one entry per allocator step. */
export interface RankHistory {
  /** Module paths, in model order. */
  readonly modules: readonly string[];
  /** The config's initR. */
  readonly initR: number;
  /** The config's targetR. */
  readonly targetR: number;
  /** PEFT's init_bgt. */
  readonly initialBudget: number;
  /** PEFT's target_bgt. */
  readonly targetBudget: number;
  /** One entry per allocator step, in order. */
  readonly entries: readonly RankHistoryEntry[];
}

/** What {@link RankAllocator.updateAndAllocate} did. */
export interface AllocationResult {
  /** The global step passed in. */
  readonly step: number;
  /** `warmup` (step ≤ tinit), `budgeting` (cubic schedule), `final` (step = totalStep − tfinal: pattern fixed) or `fixed` (after it). */
  readonly phase: AllocationPhase;
  /** The scheduled budget. */
  readonly budget: number;
  /** The rank pattern set at this step (keyed `<path>.lora_E`), or null when none was set. */
  readonly rankPattern: Readonly<Record<string, readonly boolean[]>> | null;
  /** Modules grown at this step (rank growth), with the triplets each gained. */
  readonly grown: Readonly<Record<string, number>>;
}

/** The smoothed importance state of one factor (PEFT's `exp_avg_ipt` and `exp_avg_unc`). */
interface FactorState {
  sensitivity: tf.Tensor;
  uncertainty: tf.Tensor;
}

type FactorName = keyof AdaLoraFactors;
const FACTORS: readonly FactorName[] = ['lora_A', 'lora_E', 'lora_B'];
const KINDS = ['sensitivity', 'uncertainty'] as const;

/** Options for {@link RankAllocator}. */
export interface RankAllocatorOptions {
  /** The adapter's validated config (totalStep set). */
  readonly config: AdaLoraConfig;
  /** The adapter's modules by path, in model order. */
  readonly modules: readonly (readonly [string, AdaLoraAdapter])[];
  /** Seed for the A and B rows that rank growth draws (default: unseeded). */
  readonly seed?: number;
}

/**
 * AdaLoRA's rank allocator (PEFT's `RankAllocator` with `AdaLoraModel.update_and_allocate`), for
 * one trainable adapter. The plugin's `afterStep` hook drives it; a hand-written loop calls
 * {@link RankAllocator.updateAndAllocate} itself after each optimizer step.
 *
 * - importance per entry: sensitivity `I = |w ⊙ ∇w|`, `Ī ← β1·Ī + (1−β1)·I`,
 *   `Ū ← β2·Ū + (1−β2)·|I − Ī|` (with the updated Ī), score `Ī ⊙ Ū` (state starts at zero, no bias correction);
 * - triplet score `S_i = s(E_i) + (mean_j s(A_ij) + mean_k s(B_ki))`, pooled over every module;
 * - masking to budget b: τ = the k-th smallest score with k = (live triplets) − b; every triplet
 *   with `S_i ≤ τ` has `E_i` set to 0 (A and B untouched, so it can come back).
 *
 * It holds its importance state as tensors (6 per module), freed at the final step, by `dispose`,
 * or when the module's adapter is disposed (e.g. by `adapterModel.dispose()`).
 *
 * Its whole state (importance, row flags, growth, patterns, history) goes into core's trainer
 * checkpoints through the adapter's training hook ({@link RankAllocator.checkpointState}), so a
 * resumed run continues exactly.
 */
export class RankAllocator {
  /** The adapter's config. */
  readonly config: AdaLoraConfig;
  /** PEFT's `init_bgt`. */
  readonly initialBudget: number;
  /** PEFT's `target_bgt`. */
  readonly targetBudget: number;
  private readonly modules: readonly (readonly [string, AdaLoraAdapter])[];
  private readonly state = new Map<AdaLoraAdapter, Map<FactorName, FactorState>>();
  private readonly protectedUntil = new Map<AdaLoraAdapter, number[]>();
  private readonly entries: RankHistoryEntry[] = [];
  private readonly seed: number | undefined;
  private finalPattern: Record<string, boolean[]> | null = null;
  private lastPattern: Record<string, boolean[]> | null = null;
  private growthEvents = 0;

  constructor(options: RankAllocatorOptions) {
    const { config } = options;
    if (config.totalStep === null) {
      throw new TrainingError(
        "[adalora] The rank allocator needs totalStep (PEFT's total_step). Create the adapter with e.g. { totalStep: 1000 }.",
      );
    }
    this.config = config;
    this.modules = options.modules;
    this.seed = options.seed;
    this.initialBudget = this.modules.reduce((sum, [, adapter]) => sum + adapter.rows, 0);
    this.targetBudget = config.targetR * this.modules.length;
  }

  private get totalStep(): number {
    return this.config.totalStep as number;
  }

  /** The step at which the final pattern is fixed: totalStep − tfinal. */
  get finalStep(): number {
    return this.totalStep - this.config.tfinal;
  }

  /** The schedule at a global step. */
  budgetAt(step: number): {
    /** Triplets (rows of Λ) to keep over all modules at this step. */
    budget: number;
    /** Whether the schedule masks to `budget` at this step. */
    mask: boolean;
  } {
    return budgetSchedule(step, {
      initialBudget: this.initialBudget,
      targetBudget: this.targetBudget,
      tinit: this.config.tinit,
      tfinal: this.config.tfinal,
      totalStep: this.totalStep,
      deltaT: this.config.deltaT,
    });
  }

  /**
   * PEFT's `update_and_allocate(global_step)`, to call once per optimizer step, after the step,
   * with that step's gradients (still alive):
   * - `step < totalStep − tfinal`: update the importance, grow (if enabled and due), and mask to the
   *   budget when the schedule says so;
   * - `step === totalStep − tfinal`: mask to the target budget, fix that pattern, free the importance state;
   * - later: re-zero the pruned Λ entries after every optimizer update.
   *
   * The triplet scores, where growth or masking needs them, are read synchronously: on a GPU backend
   * use {@link RankAllocator.updateAndAllocateAsync}.
   *
   * @param step PEFT's 0-based global step (core's trainer passes `step − 1` of its 1-based count).
   * @throws {TrainingError} when a factor has no gradient (the adapter is not trainable).
   */
  updateAndAllocate(step: number, gradients: ReadonlyMap<tf.Variable, tf.Tensor>): AllocationResult {
    return this.allocate(step, this.updateForStep(step, gradients) ? this.tripletScores() : null);
  }

  /**
   * {@link RankAllocator.updateAndAllocate}, reading the triplet scores with `await data()`: a
   * synchronous read stalls a GPU backend (WebGL, WebGPU) until its queue drains. The plugin's
   * training hook calls this one. The same result, step for step.
   */
  async updateAndAllocateAsync(step: number, gradients: ReadonlyMap<tf.Variable, tf.Tensor>): Promise<AllocationResult> {
    return this.allocate(step, this.updateForStep(step, gradients) ? await this.tripletScoresAsync() : null);
  }

  /** A step's importance update (before the final step); whether growth or masking will need the scores. */
  private updateForStep(step: number, gradients: ReadonlyMap<tf.Variable, tf.Tensor>): boolean {
    if (step > this.finalStep) return false;
    if (step === this.finalStep) return true;
    this.updateImportance(gradients);
    return this.growthDue(step) || this.budgetAt(step).mask;
  }

  /** The rest of a step, after updateForStep, with the scores it asked for (growth leaves them as they are). */
  private allocate(step: number, scores: Map<string, Float32Array> | null): AllocationResult {
    const finalStep = this.finalStep;
    let phase: AllocationPhase;
    let budget: number;
    let rankPattern: Record<string, boolean[]> | null = null;
    let grown: Record<string, number> = {};
    let masked = false;
    if (step < finalStep) {
      if (this.growthDue(step)) grown = this.grow(step, scores!);
      const scheduled = this.budgetAt(step);
      budget = scheduled.budget;
      phase = step <= this.config.tinit ? 'warmup' : 'budgeting';
      if (scheduled.mask) {
        rankPattern = this.maskWithScores(scores!, budget, { step, final: false });
        this.lastPattern = rankPattern;
        masked = true;
      }
    } else if (step === finalStep) {
      budget = this.budgetAt(step).budget;
      phase = 'final';
      rankPattern = this.maskWithScores(scores!, budget, { step, final: true });
      this.lastPattern = rankPattern;
      this.finalPattern = rankPattern;
      masked = true;
      this.resetImportance();
    } else {
      budget = this.targetBudget;
      phase = 'fixed';
      // PEFT re-applies the stored pattern; without one (training began after the final step) nothing is masked.
      if (this.finalPattern ?? this.lastPattern) for (const [, adapter] of this.modules) adapter.reapplyMask();
    }
    const ranks: Record<string, number> = {};
    let total = 0;
    for (const [path, adapter] of this.modules) {
      ranks[path] = adapter.rank;
      total += adapter.rank;
    }
    this.entries.push({ step, phase, budget, masked, grown, ranks, total });
    return { step, phase, budget, rankPattern, grown };
  }

  /**
   * PEFT's `update_ipt`: update the smoothed sensitivity and uncertainty of every entry of A, E and
   * B from the current values and `gradients`.
   * @throws {TrainingError} when a factor has no gradient.
   */
  updateImportance(gradients: ReadonlyMap<tf.Variable, tf.Tensor>): void {
    const { beta1, beta2 } = this.config;
    for (const [path, adapter] of this.modules) {
      if (adapter.rows === 0) continue;
      let perFactor = this.state.get(adapter);
      if (!perFactor) {
        perFactor = new Map();
        this.state.set(adapter, perFactor);
        // Disposing the model frees this module's importance state too.
        adapter.onDispose(() => this.freeState(adapter));
      }
      const factors = adapter.factors();
      for (const name of FACTORS) {
        const variable = factors[name];
        const gradient = gradients.get(variable);
        if (!gradient) {
          throw new TrainingError(
            `[adalora] No gradient for ${path}.${name}: AdaLoRA's rank allocation needs the gradients of every lora_A, lora_E and lora_B. Make the adapter trainable (inferenceMode: false, setAdapter) and call updateAndAllocate after the optimizer step, before the gradients are freed.`,
          );
        }
        const previous = perFactor.get(name);
        // One fused kernel per factor on WASM (core's sensitivityUpdate; the same bits as its composite form).
        const next = tf.tidy(() =>
          sensitivityUpdate(
            {
              param: variable,
              gradient,
              sensitivity: previous?.sensitivity ?? tf.zerosLike(variable),
              uncertainty: previous?.uncertainty ?? tf.zerosLike(variable),
            },
            { beta1, beta2 },
          ),
        );
        if (previous) tf.dispose([previous.sensitivity, previous.uncertainty]);
        perFactor.set(name, next);
      }
    }
  }

  /**
   * The triplet score of every row of every module (PEFT's `_combine_ipt` of the element scores):
   * `s(E_i) + (mean_j s(A_ij) + mean_k s(B_ki))`. Zero before the first importance update.
   */
  tripletScores(): Map<string, Float32Array> {
    const tensors = this.tripletScoreTensors();
    try {
      return new Map([...tensors].map(([path, values]) => [path, values.dataSync() as Float32Array]));
    } finally {
      tf.dispose([...tensors.values()]);
    }
  }

  /** {@link RankAllocator.tripletScores}, read with `await data()` (nothing read synchronously). */
  async tripletScoresAsync(): Promise<Map<string, Float32Array>> {
    const tensors = this.tripletScoreTensors();
    try {
      const read = await Promise.all([...tensors].map(async ([path, values]) => [path, (await values.data()) as Float32Array] as const));
      return new Map(read);
    } finally {
      tf.dispose([...tensors.values()]);
    }
  }

  /** Each module's triplet scores as a tensor (zeros before the first update); the caller disposes them. */
  private tripletScoreTensors(): Map<string, tf.Tensor> {
    const scores = new Map<string, tf.Tensor>();
    for (const [path, adapter] of this.modules) {
      const perFactor = this.state.get(adapter);
      if (!perFactor || adapter.rows === 0) {
        scores.set(path, tf.zeros([adapter.rows]));
        continue;
      }
      const element = (name: FactorName): tf.Tensor => {
        const { sensitivity, uncertainty } = perFactor.get(name)!;
        return tf.mul(sensitivity, uncertainty);
      };
      const values = tf.tidy(() => {
        const fromA = tf.mean(element('lora_A'), 1);
        const fromB = tf.mean(element('lora_B'), 0);
        const fromE = tf.reshape(element('lora_E'), [-1]);
        return tf.add(fromE, tf.add(fromA, fromB));
      });
      scores.set(path, values);
    }
    return scores;
  }

  /**
   * The smoothed sensitivity and uncertainty of one module's factor, as plain arrays (for reports
   * and tests); null before the first update.
   */
  importanceOf(path: string, factor: FactorName): {
    /** Smoothed sensitivity Ī per entry (PEFT's `exp_avg_ipt`), row-major in the factor's shape. */
    sensitivity: Float32Array;
    /** Smoothed uncertainty Ū per entry (PEFT's `exp_avg_unc`), row-major in the factor's shape. */
    uncertainty: Float32Array;
  } | null {
    const adapter = this.modules.find(([p]) => p === path)?.[1];
    const state = adapter ? this.state.get(adapter)?.get(factor) : undefined;
    if (!state) return null;
    return { sensitivity: state.sensitivity.dataSync() as Float32Array, uncertainty: state.uncertainty.dataSync() as Float32Array };
  }

  /**
   * PEFT's `mask_to_budget`: rank the live triplets of all modules together and zero Λ of every
   * triplet whose score is ≤ the k-th smallest, k = (live triplets) − budget. Newly grown
   * triplets still in their warm-up are kept and count against the budget (not when `final`).
   * @returns the rank pattern (keyed `<path>.lora_E`).
   */
  maskToBudget(budget: number, options: { step: number; final: boolean }): Record<string, boolean[]> {
    return this.maskWithScores(this.tripletScores(), budget, options);
  }

  /** {@link RankAllocator.maskToBudget} with the triplet scores already read. */
  private maskWithScores(scores: ReadonlyMap<string, Float32Array>, budget: number, options: { step: number; final: boolean }): Record<string, boolean[]> {
    const pool: number[] = [];
    let protectedCount = 0;
    const isProtected = (adapter: AdaLoraAdapter, row: number): boolean =>
      !options.final && (this.protectedUntil.get(adapter)?.[row] ?? -1) > options.step;
    for (const [path, adapter] of this.modules) {
      const live = adapter.liveRows();
      const moduleScores = scores.get(path)!;
      live.forEach((on, row) => {
        if (!on) return;
        if (isProtected(adapter, row)) protectedCount += 1;
        else pool.push(moduleScores[row]!);
      });
    }
    const k = Math.min(pool.length, pool.length - (budget - protectedCount));
    // torch.kthvalue: the k-th smallest (1-based). k ≤ 0 prunes nothing (PEFT would fail there).
    const threshold = k <= 0 ? Number.NEGATIVE_INFINITY : [...pool].sort((x, y) => x - y)[k - 1]!;
    const pattern: Record<string, boolean[]> = {};
    for (const [path, adapter] of this.modules) {
      const live = adapter.liveRows();
      const moduleScores = scores.get(path)!;
      const keep = live.map((on, row) => on && (isProtected(adapter, row) || !(moduleScores[row]! <= threshold)));
      adapter.applyMask(keep);
      pattern[`${path}.lora_E`] = adapter.rankPattern('pruned');
    }
    return pattern;
  }

  /** Whether rank growth (when configured) is due at this step. */
  private growthDue(step: number): boolean {
    const growth: AdaLoraGrowthOptions | null = this.config.growth;
    return growth !== null && step > 0 && step % growth.every === 0;
  }

  /** Grow the highest-scoring modules' dormant rows (a step where growthDue). */
  private grow(step: number, scores: ReadonlyMap<string, Float32Array>): Record<string, number> {
    const growth = this.config.growth!;
    const candidates = this.modules
      .map(([path, adapter], index) => {
        const live = adapter.liveRows();
        const moduleScores = scores.get(path)!;
        let sum = 0;
        let count = 0;
        live.forEach((on, row) => {
          if (on) {
            sum += moduleScores[row]!;
            count += 1;
          }
        });
        return { path, adapter, index, score: count === 0 ? 0 : sum / count, dormant: adapter.dormantRows() };
      })
      .filter((candidate) => candidate.dormant.length > 0)
      .sort((x, y) => y.score - x.score || x.index - y.index)
      .slice(0, growth.modules);
    const grown: Record<string, number> = {};
    for (const candidate of candidates) {
      const rows = candidate.dormant.slice(0, growth.rank);
      const seed = this.seed === undefined ? undefined : this.seed + 100_003 * (this.growthEvents + 1) + 2 * candidate.index;
      const done = candidate.adapter.grow(rows, seed);
      let until = this.protectedUntil.get(candidate.adapter);
      if (!until) {
        until = new Array<number>(candidate.adapter.rows).fill(-1);
        this.protectedUntil.set(candidate.adapter, until);
      }
      for (const row of done) until[row] = step + growth.every;
      if (done.length > 0) grown[candidate.path] = done.length;
    }
    this.growthEvents += 1;
    return grown;
  }

  private freeState(adapter: AdaLoraAdapter): void {
    const perFactor = this.state.get(adapter);
    if (!perFactor) return;
    for (const { sensitivity, uncertainty } of perFactor.values()) tf.dispose([sensitivity, uncertainty]);
    this.state.delete(adapter);
  }

  /**
   * Everything the allocator keeps, for core's trainer checkpoints (the AdaLoRA training hook's
   * `checkpoint.state`) or a hand-written loop's own: the importance tensors (clones, which copy
   * nothing; the caller disposes them) and, as JSON, each module's live rows, mask and growth
   * warm-up, the growth count, the rank patterns, the history and the schedule settings.
   */
  checkpointState(): TrainingHookState {
    const tensors: Record<string, tf.Tensor> = {};
    const modules = this.modules.map(([path, adapter]) => {
      const perFactor = this.state.get(adapter);
      for (const [factor, importance] of perFactor ?? []) {
        for (const kind of KINDS) tensors[importanceTensorName(path, factor, kind)] = tf.clone(importance[kind]);
      }
      const until = this.protectedUntil.get(adapter);
      return { path, rows: adapter.rows, ...adapter.rowState(), protectedUntil: until ? [...until] : null, importance: perFactor !== undefined };
    });
    // Patterns and history entries are replaced, never changed in place, so sharing them is safe.
    const json: AllocatorCheckpointJson = {
      version: 1,
      schedule: scheduleOf(this.config),
      modules,
      growthEvents: this.growthEvents,
      lastPattern: this.lastPattern,
      finalPattern: this.finalPattern,
      history: [...this.entries],
    };
    return { tensors, json };
  }

  /**
   * Put back a state from {@link RankAllocator.checkpointState} (a resumed run, before the weights
   * are loaded). The given tensors are copied; the caller disposes them.
   * @param source the checkpoint file (or a description), named in errors.
   * @throws {CheckpointError} when the state was written for another config or model, or is damaged:
   * one line naming the source, the field, what was expected and found, and the fix.
   */
  restoreCheckpointState(state: TrainingHookState, source: string, field = 'allocator state'): void {
    const json = parseAllocatorCheckpoint(state.json, { source, field, config: this.config, modules: this.modules.map(([path, adapter]) => [path, adapter.rows]) });
    const expectedNames = new Set<string>();
    json.modules.forEach((module, index) => {
      if (!module.importance) return;
      const factors = this.modules[index]![1].factors();
      for (const factor of FACTORS) {
        for (const kind of KINDS) {
          const name = importanceTensorName(module.path, factor, kind);
          expectedNames.add(name);
          const tensor = state.tensors[name];
          const shape = factors[factor].shape;
          if (!tensor || tensor.shape.length !== shape.length || tensor.shape.some((d, i) => d !== shape[i])) {
            throw hookStateError({ plugin: 'adalora', source, field: `tensor ${name}`, expected: `shape [${shape.join(', ')}]`, found: tensor ? `[${tensor.shape.join(', ')}]` : 'none', missing: tensor ? [] : [name] });
          }
        }
      }
    });
    const unexpected = Object.keys(state.tensors).filter((name) => !expectedNames.has(name));
    if (unexpected.length > 0) {
      throw hookStateError({ plugin: 'adalora', source, field: `tensor ${unexpected[0]}`, expected: 'importance of a module with importance: true', found: 'an unlisted tensor', unexpected });
    }
    // Valid: replace everything, copying what is kept.
    const copy = structuredClone(json);
    this.resetImportance();
    this.protectedUntil.clear();
    copy.modules.forEach((module, index) => {
      const adapter = this.modules[index]![1];
      adapter.restoreRowState(module);
      if (module.protectedUntil) this.protectedUntil.set(adapter, module.protectedUntil);
      if (!module.importance) return;
      const perFactor = new Map<FactorName, FactorState>();
      for (const factor of FACTORS) {
        const [sensitivity, uncertainty] = KINDS.map((kind) => tf.clone(state.tensors[importanceTensorName(module.path, factor, kind)]!));
        perFactor.set(factor, { sensitivity: sensitivity!, uncertainty: uncertainty! });
      }
      this.state.set(adapter, perFactor);
      adapter.onDispose(() => this.freeState(adapter));
    });
    this.growthEvents = copy.growthEvents;
    this.lastPattern = copy.lastPattern;
    this.finalPattern = copy.finalPattern;
    this.entries.splice(0, this.entries.length, ...copy.history);
  }

  /** PEFT's `reset_ipt`: free the importance state (done at the final step). */
  resetImportance(): void {
    for (const adapter of [...this.state.keys()]) this.freeState(adapter);
  }

  /** The last rank pattern set (PEFT's `config.rank_pattern`), keyed `<path>.lora_E`; null before any allocation. */
  rankPattern(): Readonly<Record<string, readonly boolean[]>> | null {
    return this.lastPattern;
  }

  /** Whether the final pattern has been fixed. */
  get finalized(): boolean {
    return this.finalPattern !== null;
  }

  /** The per-step rank history (for {@link formatRankTable} and the charts). */
  history(): RankHistory {
    return {
      modules: this.modules.map(([path]) => path),
      initR: this.config.initR,
      targetR: this.config.targetR,
      initialBudget: this.initialBudget,
      targetBudget: this.targetBudget,
      entries: [...this.entries],
    };
  }

  /** Free the importance state. The adapters are not touched. */
  dispose(): void {
    this.resetImportance();
  }
}
