import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError, type AdapterInputs, type AdapterState, type TrainingHooks } from '@lora/core';
import { assertTensorsFit, compareTensorShapes } from '@lora/core/internal';
import { GeneratedAdapterCache, type CacheStats } from './cache.js';
import { batchConditions, ConditionEncoder, conditionKey, resolveCondition, type Condition, type ConditionBatch, type ConditionInput } from './conditions.js';
import { HyperGenerator, hyperParameterCount, planTargets, type GeneratedFactors, type HyperParameterCount, type TargetPlan } from './generator.js';
import { hyperLoraScaling, type HyperLoraConfig } from './hyper-config.js';

/** Prefix of every key the HyperLoRA state saves in `adapter_model.safetensors`. */
export const HYPERLORA_STATE_PREFIX = 'hyperlora.';

/** Default inference-cache budget: 64 MiB of generated factors. */
export const DEFAULT_CACHE_BYTES = 64 * 1024 * 1024;

/** Options for {@link HyperLoraState}. */
export interface HyperLoraStateOptions {
  /** Name of the adapter in the model (e.g. `default`), named in errors. */
  readonly adapterName: string;
  /** The validated config (see {@link parseHyperLoraConfig}). */
  readonly config: HyperLoraConfig;
  /** Every target of the adapter, by module path, in model order. */
  readonly targets: readonly (readonly [string, {
    /** Input width of the target layer. */
    readonly inFeatures: number;
    /** Output width of the target layer. */
    readonly outFeatures: number;
  }])[];
  /** Seed of the initialisation and of condition dropout (default 0). */
  readonly seed?: number;
  /** Inference-cache budget in bytes (default {@link DEFAULT_CACHE_BYTES}; 0 disables it). */
  readonly cacheBytes?: number;
}

/** The factors one target uses in the current forward pass. */
export interface ForwardFactors {
  /** A [u, r, in] for the u distinct conditions. */
  readonly a: tf.Tensor3D;
  /** B [u, out, r]. */
  readonly b: tf.Tensor3D;
  /** Row → condition index [batch] (int32), or null when one condition serves the batch. */
  readonly rowIndex: tf.Tensor1D | null;
}

interface CurrentForward {
  readonly batch: ConditionBatch;
  readonly factors: readonly GeneratedFactors[];
  readonly rowIndex: tf.Tensor1D | null;
  /** Tensors this forward made outside a gradient tape; disposed by endForward. */
  readonly owned: tf.Tensor[];
  /** Whether a gradient tape was recording when the pass began (then the caller's scope frees its tensors). */
  readonly taped: boolean;
}

function flatten(factors: readonly GeneratedFactors[]): tf.Tensor[] {
  return factors.flatMap(({ a, b }) => [a, b]);
}

function pairsOf(tensors: readonly tf.Tensor[]): GeneratedFactors[] {
  const pairs: GeneratedFactors[] = [];
  for (let i = 0; i < tensors.length; i += 2) pairs.push({ a: tensors[i] as tf.Tensor3D, b: tensors[i + 1] as tf.Tensor3D });
  return pairs;
}

/**
 * Uniform numbers in [0, 1) from tfjs's seeded generator, drawn 1024 at a time (condition dropout is
 * the only user). Not core's `seededRandom`: these are the draws the README's demo was measured with.
 */
function seededUniform(seed: number): () => number {
  let buffer: Float32Array = new Float32Array(0);
  let position = 0;
  let refills = 0;
  return () => {
    if (position >= buffer.length) {
      buffer = tf.tidy(() => tf.randomUniform([1024], 0, 1, 'float32', seed + refills++).dataSync() as Float32Array);
      position = 0;
    }
    return buffer[position++]!;
  };
}

/**
 * The adapter-level object of one HyperLoRA adapter (core's `AdapterState`, PEFT's model.py
 * role): it owns the condition encoder and the generator (saved once, under `hyperlora.*`), reads
 * the condition of each forward pass from `inputs.condition`, deduplicates it, runs the generator
 * once for the u distinct conditions × M targets, and hands each layer its A/B and the row → condition
 * index. In inference (no gradient tape) single conditions come from an LRU cache; any optimizer
 * step or weight load invalidates it.
 *
 * Tensor ownership: inside a gradient tape, generated tensors belong to the caller's scope (they
 * are needed for backward); otherwise `endForward` disposes what the forward made, and the cache
 * owns what it keeps.
 */
export class HyperLoraState implements AdapterState {
  /** Name of the adapter in the model (e.g. `default`), named in errors. */
  readonly adapterName: string;
  /** The adapter's validated config. */
  readonly config: HyperLoraConfig;
  /** The targets grouped into layers and module types (from the options' `targets` and the config's `layersPattern`). */
  readonly plan: TargetPlan;
  /** Maps resolved conditions to vectors of width e; its variables are saved under `hyperlora.condition.*`. */
  readonly encoder: ConditionEncoder;
  /** Produces every target's A and B from an encoded condition; its variables are saved under `hyperlora.*`. */
  readonly generator: HyperGenerator;
  /** LRU cache of generated factors for inference (budget `cacheBytes`), invalidated by any optimizer step or weight load. */
  readonly cache: GeneratedAdapterCache;
  /** s = alpha/r (or alpha/√r): outside the generator, as in PEFT, so exports keep `lora_alpha`. */
  readonly scaling: number;
  private readonly indexByPath: Map<string, number>;
  private readonly random: () => number;
  /** Forward passes in progress, innermost last (`withAdapterInputs` nests). */
  private readonly passes: CurrentForward[] = [];
  private defaultCondition: Condition | undefined;

  constructor(options: HyperLoraStateOptions) {
    this.adapterName = options.adapterName;
    this.config = options.config;
    this.plan = planTargets(options.targets, options.config.layersPattern);
    this.indexByPath = new Map(this.plan.targets.map((target, j) => [target.modulePath, j]));
    const seed = options.seed ?? 0;
    this.encoder = new ConditionEncoder(options.config.condition, seed);
    this.generator = new HyperGenerator({ config: options.config, plan: this.plan, conditionWidth: this.encoder.width, seed: seed + 1000 });
    this.cache = new GeneratedAdapterCache(options.cacheBytes ?? DEFAULT_CACHE_BYTES);
    this.scaling = hyperLoraScaling(options.config);
    this.random = seededUniform(seed + 7);
  }

  /** The index of a target by module path. @throws {CheckpointError} for a path that is not a target. */
  targetIndex(modulePath: string): number {
    const index = this.indexByPath.get(modulePath);
    if (index === undefined) {
      throw new CheckpointError(`[@lora/hyper] ${modulePath} is not a target of HyperLoRA adapter "${this.adapterName}".`, { plugin: 'hyper' });
    }
    return index;
  }

  /** The generator's parameter count by the documented formula (equal to the variables' sizes; tested). */
  parameterCount(): HyperParameterCount {
    return hyperParameterCount(this.config, this.plan);
  }

  /** Variables saved once per adapter, under `hyperlora.*` keys. */
  namedTensors(): [string, tf.Variable][] {
    return [...this.encoder.namedTensors(), ...this.generator.namedTensors()].map(([key, variable]) => [`${HYPERLORA_STATE_PREFIX}${key}`, variable]);
  }

  /**
   * Assign saved tensors (by full key) to the variables, checking names and shapes first; the cache
   * is invalidated. @throws {CheckpointError} listing missing, unexpected and mis-shaped tensors.
   */
  loadTensors(tensors: ReadonlyMap<string, tf.Tensor>): void {
    const named = this.namedTensors();
    const fit = compareTensorShapes(new Map(named.map(([key, variable]) => [key, variable.shape])), tensors, {
      ignore: (key) => !key.startsWith(HYPERLORA_STATE_PREFIX),
    });
    assertTensorsFit(fit, {
      plugin: '@lora/hyper',
      source: 'the saved HyperLoRA generator',
      target: `HyperLoRA adapter "${this.adapterName}"`,
      hint: 'Check that target_modules and the condition in adapter_config.json match the model.',
    });
    for (const [key, variable] of named) variable.assign(tensors.get(key)!);
    this.invalidate();
  }

  /**
   * The condition used when a forward pass gives none (default: every factor null). Merging never
   * uses it: a HyperLoRA refuses to merge (export a condition as a plain LoRA and merge that).
   * @throws {ConfigError} for an unknown factor or value.
   */
  setDefaultCondition(condition: Condition | undefined): void {
    if (condition !== undefined) resolveCondition(this.config.condition, condition);
    this.defaultCondition = condition;
  }

  /** Drop cached generated adapters (call after assigning generator variables directly). */
  invalidate(): void {
    this.cache.invalidate();
  }

  /** Cache counters. */
  cacheStats(): CacheStats {
    return this.cache.stats();
  }

  /** Hooks for training: any optimizer step invalidates the inference cache. */
  trainingHooks(): TrainingHooks {
    return { afterStep: () => this.invalidate() };
  }

  /**
   * Called before a forward pass with its inputs: validates `inputs.condition`, deduplicates it,
   * and generates the factors of every target for the distinct conditions (cached in inference).
   * @throws {ConfigError} for an unknown factor or value.
   */
  beginForward(context: { readonly inputs: AdapterInputs; readonly training: boolean }): void {
    const input = (context.inputs['condition'] as ConditionInput | undefined) ?? this.defaultCondition;
    const batch = batchConditions(this.config.condition, input, {
      dropout: context.training ? this.config.conditionDropout : 0,
      random: this.random,
    });
    const taped = tf.engine().isTapeOn();
    const owned: tf.Tensor[] = [];
    let factors: readonly GeneratedFactors[];
    if (!taped && this.cache.budgetBytes > 0) {
      const perCondition = this.cachedOrGenerated(batch);
      if (perCondition.length === 1) factors = perCondition[0]!;
      else {
        factors = tf.tidy(() =>
          this.plan.targets.map((_, j) => ({
            a: tf.concat(perCondition.map((item) => item[j]!.a)) as tf.Tensor3D,
            b: tf.concat(perCondition.map((item) => item[j]!.b)) as tf.Tensor3D,
          })),
        );
        for (const { a, b } of factors) owned.push(a, b);
      }
      // Entries too large for the budget were generated for this forward only.
      for (const item of perCondition) for (const { a, b } of item) if (!this.cache.owns(a)) owned.push(a, b);
    } else {
      factors = pairsOf(tf.tidy(() => flatten(this.generator.generate(this.encoder.encode(batch.unique)))));
      if (!taped) for (const { a, b } of factors) owned.push(a, b);
    }
    const rowIndex = batch.rowToUnique === null ? null : tf.tensor1d(batch.rowToUnique, 'int32');
    if (rowIndex && !taped) owned.push(rowIndex);
    this.passes.push({ batch, factors, rowIndex, owned, taped });
  }

  /** Called after the forward pass (also on error): frees what the pass made outside a gradient tape. */
  endForward(): void {
    const pass = this.passes.pop();
    if (pass && !pass.taped) tf.dispose(pass.owned);
  }

  /** The distinct conditions of the innermost forward pass in progress (keys), or null outside one. */
  currentConditionKeys(): readonly string[] | null {
    return this.passes[this.passes.length - 1]?.batch.keys ?? null;
  }

  private cachedOrGenerated(batch: ConditionBatch): (readonly GeneratedFactors[])[] {
    const result = new Array<readonly GeneratedFactors[]>(batch.unique.length);
    const missing: number[] = [];
    batch.keys.forEach((key, i) => {
      const hit = this.cache.get(key);
      if (hit) result[i] = hit;
      else missing.push(i);
    });
    if (missing.length > 0) {
      // One generator run for all missing conditions, split per condition for the cache.
      const split = tf.tidy(() => {
        const generated = this.generator.generate(this.encoder.encode(missing.map((i) => batch.unique[i]!)));
        return missing.map((_, m) =>
          generated.map(({ a, b }) => ({
            a: tf.slice(a, [m, 0, 0], [1, a.shape[1], a.shape[2]]),
            b: tf.slice(b, [m, 0, 0], [1, b.shape[1], b.shape[2]]),
          })),
        );
      });
      const pinned = new Set(batch.keys);
      missing.forEach((i, m) => {
        this.cache.put(batch.keys[i]!, split[m]!, pinned);
        result[i] = split[m]!;
      });
    }
    return result;
  }

  /**
   * The factors target `targetIndex` uses now: those of the current forward pass, or, for a forward
   * that did not go through `beginForward`, the default condition's (generated for this target
   * alone inside the caller's scope when taping or when the cache cannot hold it).
   */
  factorsFor(targetIndex: number): ForwardFactors {
    const pass = this.passes[this.passes.length - 1];
    if (pass) {
      const { a, b } = pass.factors[targetIndex]!;
      return { a, b, rowIndex: pass.rowIndex };
    }
    const condition = resolveCondition(this.config.condition, this.defaultCondition);
    if (!tf.engine().isTapeOn() && this.cache.budgetBytes > 0) {
      const key = conditionKey(this.config.condition, condition);
      const hit = this.cache.get(key);
      if (hit) return { ...hit[targetIndex]!, rowIndex: null };
      const factors = pairsOf(tf.tidy(() => flatten(this.generator.generate(this.encoder.encode([condition])))));
      if (this.cache.put(key, factors)) return { ...factors[targetIndex]!, rowIndex: null };
      // Too large for the budget: free the rest now; this target's pair is left to the caller's scope.
      tf.dispose(flatten(factors.filter((_, j) => j !== targetIndex)));
      return { ...factors[targetIndex]!, rowIndex: null };
    }
    const [only] = this.generator.generate(this.encoder.encode([condition]), [targetIndex]);
    return { ...only!, rowIndex: null };
  }

  /**
   * ΔW = s·B(c)·A(c) of one target for an explicit condition, [out, in]. The caller disposes it.
   * @throws {ConfigError} for an unknown factor or value.
   */
  deltaWeight(targetIndex: number, condition: Condition): tf.Tensor2D {
    const resolved = resolveCondition(this.config.condition, condition);
    return tf.tidy(() => {
      const [factors] = this.generator.generate(this.encoder.encode([resolved]), [targetIndex]);
      return tf.mul(tf.matMul(tf.squeeze(factors!.b, [0]) as tf.Tensor2D, tf.squeeze(factors!.a, [0]) as tf.Tensor2D), this.scaling) as tf.Tensor2D;
    });
  }

  /**
   * PEFT LoRA factors of every target for one condition, extra gains folded into B:
   * lora_A [r, in], lora_B [out, r] with ΔW = s·lora_B·lora_A. The caller disposes them.
   */
  exportFactors(condition: Condition | undefined): {
    /** Dotted path of the target layer. */
    modulePath: string;
    /** PEFT's `lora_A` [r, in]. */
    loraA: tf.Tensor2D;
    /** PEFT's `lora_B` [out, r], any extra gain folded in (not the scaling s). */
    loraB: tf.Tensor2D;
  }[] {
    const resolved = resolveCondition(this.config.condition, condition);
    const factors = tf.tidy(() => this.generator.exportFactors(this.encoder.encode([resolved])).flatMap(({ loraA, loraB }) => [loraA, loraB]));
    return this.plan.targets.map((target, j) => ({ modulePath: target.modulePath, loraA: factors[2 * j] as tf.Tensor2D, loraB: factors[2 * j + 1] as tf.Tensor2D }));
  }

  dispose(): void {
    while (this.passes.length > 0) this.endForward();
    this.cache.dispose();
    this.encoder.dispose();
    this.generator.dispose();
  }
}
