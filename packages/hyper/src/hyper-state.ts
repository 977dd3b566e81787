import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError, ConfigError, LoraError, ShapeError, type AdapterInputs, type AdapterState, type TrainingHooks } from '@lora/core';
import { assertTensorsFit, compareTensorShapes } from '@lora/core/internal';
import { checkCacheBytes, GeneratedAdapterCache, type CacheStats } from './cache.js';
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

/** Options for {@link HyperLoraState.factorsFor}. */
export interface FactorsForOptions {
  /**
   * Shape of the layer's input. When given, a per-row condition list is checked against its first
   * axis before anything is generated (a mismatch throws a ShapeError and runs no generator).
   */
  readonly inputShape?: readonly number[];
  /** Path of the layer asking, named in errors. */
  readonly modulePath?: string;
}

/** The generated factors of one forward pass (made at its first layer, reused by the others). */
interface Generated {
  readonly factors: readonly GeneratedFactors[];
  readonly rowIndex: tf.Tensor1D | null;
  /** Tensors made for this pass (not the cache's), kept out of the layers' tidies; disposed by endForward or when regenerated. */
  readonly owned: tf.Tensor[];
  /** The generator weights they were made from (each variable's dataId). */
  readonly weights: readonly object[];
  /** The gradient tape they were recorded on (tfjs's active tape), or null when none was recording. */
  readonly tape: object | null;
}

interface CurrentForward {
  /** The validated conditions; null when `beginForward` threw (core calls `endForward` then too). */
  readonly batch: ConditionBatch | null;
  /** Generated lazily, at the first layer, after that layer's input has been checked against the conditions. */
  generated: Generated | null;
}

function flatten(factors: readonly GeneratedFactors[]): tf.Tensor[] {
  return factors.flatMap(({ a, b }) => [a, b]);
}

function pairsOf(tensors: readonly tf.Tensor[]): GeneratedFactors[] {
  const pairs: GeneratedFactors[] = [];
  for (let i = 0; i < tensors.length; i += 2) pairs.push({ a: tensors[i] as tf.Tensor3D, b: tensors[i + 1] as tf.Tensor3D });
  return pairs;
}

/** The gradient tape recording now (tfjs's `activeTape`, one array per outermost gradient call), or null. */
function activeTape(): object | null {
  const engine = tf.engine();
  return engine.isTapeOn() ? (engine.state.activeTape as object) : null;
}

/** A condition example for messages: the first value of every factor, or a vector. */
function exampleCondition(config: HyperLoraConfig): string {
  const spec = config.condition;
  if (spec.kind === 'continuous') return `[${Array.from({ length: Math.min(spec.size, 2) }, () => '0.1').join(', ')}${spec.size > 2 ? ', …' : ''}]`;
  return `{ ${spec.factors.map((factor) => `${/^[A-Za-z_$][\w$]*$/u.test(factor.name) ? factor.name : JSON.stringify(factor.name)}: '${factor.values[0]!}'`).join(', ')} }`;
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
 * once for the u distinct conditions × M targets (at the pass's first layer, after checking that
 * layer's batch against a per-row list), and hands each layer its A/B and the row → condition
 * index. In inference (no gradient tape) single conditions come from an LRU cache that never serves
 * factors made from older generator weights (see {@link HyperLoraState.invalidate}).
 *
 * A forward pass must give a condition (or the state must have a default, see
 * {@link HyperLoraState.setDefaultCondition}); without one it throws a `ConfigError` saying how to
 * pass one. `{ condition: {} }` asks explicitly for every factor at its learned null embedding.
 *
 * Tensor ownership: what a forward pass generates is kept out of the layers' tidies and disposed by
 * `endForward` (under a gradient tape, the ops that use it have saved what backward needs); the
 * cache owns what it keeps. The state is disposed by the `AdapterModel` (`peft.dispose()`,
 * `deleteAdapter`) or when the last layer using it is disposed (`model.dispose()` on the wrapped
 * model frees the generator too); disposing twice is harmless.
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
  /** LRU cache of generated factors for inference (budget `cacheBytes`); dropped whenever a generator weight was reassigned. */
  readonly cache: GeneratedAdapterCache;
  /** s = alpha/r (or alpha/√r): outside the generator, as in PEFT, so exports keep `lora_alpha`. */
  readonly scaling: number;
  private readonly indexByPath: Map<string, number>;
  private readonly random: () => number;
  /** Every variable of the encoder and the generator, in `namedTensors()` order. */
  private readonly variables: readonly tf.Variable[];
  /** The variables' dataIds when the cache was last known to match them. */
  private cacheWeights: readonly object[];
  /** Forward passes in progress, innermost last (`withAdapterInputs` nests). */
  private readonly passes: CurrentForward[] = [];
  private defaultCondition: Condition | undefined;
  /** The adapter layers using this state (see {@link HyperLoraState.attachLayer}). */
  private readonly layers = new Set<object>();
  private disposed = false;

  /** @throws {ConfigError} for a seed that is not an integer or a `cacheBytes` that is not a whole number >= 0. */
  constructor(options: HyperLoraStateOptions) {
    const seed = options.seed ?? 0;
    if (!Number.isSafeInteger(seed)) {
      throw new ConfigError({ plugin: 'hyper', field: 'seed', received: options.seed, expected: 'an integer', hint: 'Pass e.g. hyper({ seed: 1 }).' });
    }
    const cacheBytes = checkCacheBytes(options.cacheBytes ?? DEFAULT_CACHE_BYTES);
    this.adapterName = options.adapterName;
    this.config = options.config;
    this.plan = planTargets(options.targets, options.config.layersPattern);
    this.indexByPath = new Map(this.plan.targets.map((target, j) => [target.modulePath, j]));
    this.encoder = new ConditionEncoder(options.config.condition, seed);
    this.generator = new HyperGenerator({ config: options.config, plan: this.plan, conditionWidth: this.encoder.width, seed: seed + 1000 });
    this.cache = new GeneratedAdapterCache(cacheBytes);
    this.scaling = hyperLoraScaling(options.config);
    this.random = seededUniform(seed + 7);
    this.variables = this.namedTensors().map(([, variable]) => variable);
    this.cacheWeights = this.weightIds();
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

  /**
   * Variables saved once per adapter, under `hyperlora.*` keys. Core's `loadAdapter` checks a saved
   * file against their shapes (naming the file) and assigns them; the cache notices the new weights.
   */
  namedTensors(): [string, tf.Variable][] {
    return [...this.encoder.namedTensors(), ...this.generator.namedTensors()].map(([key, variable]) => [`${HYPERLORA_STATE_PREFIX}${key}`, variable]);
  }

  /**
   * Assign saved tensors (by full key, `hyperlora.*`) to the variables, checking every name and
   * shape before assigning any (all or nothing); the cache is dropped. For tensors read outside
   * `loadAdapter`, which does this itself and names the file.
   * @param options.source where the tensors came from, named in the error (default `the saved HyperLoRA generator`).
   * @throws {CheckpointError} in one line listing missing, unexpected and mis-shaped tensors; nothing is assigned then.
   */
  assignTensors(tensors: ReadonlyMap<string, tf.Tensor>, options: { readonly source?: string } = {}): void {
    const named = this.namedTensors();
    const fit = compareTensorShapes(new Map(named.map(([key, variable]) => [key, variable.shape])), tensors, {
      ignore: (key) => !key.startsWith(HYPERLORA_STATE_PREFIX),
    });
    assertTensorsFit(fit, {
      plugin: '@lora/hyper',
      source: options.source ?? 'the saved HyperLoRA generator',
      target: `HyperLoRA adapter "${this.adapterName}"`,
      hint: 'Check that target_modules and the condition in adapter_config.json match the model.',
    });
    for (const [key, variable] of named) variable.assign(tensors.get(key)!);
    this.invalidate();
  }

  /**
   * The condition used when a forward pass gives none (default: none, so such a pass throws).
   * `{}` makes every factor take its learned null embedding; `undefined` removes the default.
   * Merging never uses it: a HyperLoRA refuses to merge (export a condition as a plain LoRA and merge that).
   * @throws {ConfigError} for an unknown factor or value, or a tf.Tensor.
   * @example
   * peft.adapterState('default').setDefaultCondition({ src: 'en', tgt: 'fr' });
   * const logits = model.forward(ids); // runs with src=en, tgt=fr
   */
  setDefaultCondition(condition: Condition | undefined): void {
    if (condition !== undefined) this.withAdapterName(() => resolveCondition(this.config.condition, condition));
    this.defaultCondition = condition;
  }

  /**
   * Drop cached generated adapters. Rarely needed: the cache checks, at every forward pass, that
   * no generator variable was reassigned since it was filled (`variable.assign`, which core's
   * `AdamW`, `@lora/quant`'s `AdamW8bit` and `loadAdapter` all use), and `train()` drops it after
   * every step. Call it after changing a variable's values in place (writing its backend memory),
   * which keeps its data id.
   */
  invalidate(): void {
    this.cache.invalidate();
    this.cacheWeights = this.weightIds();
  }

  /** Cache counters. */
  cacheStats(): CacheStats {
    return this.cache.stats();
  }

  /** Hooks for training: each optimizer step drops the inference cache (frees its memory early; the weight check would drop it anyway). */
  trainingHooks(): TrainingHooks {
    return { afterStep: () => this.invalidate() };
  }

  /**
   * Called before a forward pass with its inputs: validates `inputs.condition` (or the default
   * condition) and deduplicates it. Generation waits for the pass's first layer, which checks its
   * input's batch against a per-row list first. As core's `AdapterModel` does, call `endForward`
   * afterwards also when this throws.
   * @throws {ConfigError} naming the adapter: no condition and no default (saying how to pass one),
   *   an unknown factor or value, an empty list, a tensor.
   */
  beginForward(context: { readonly inputs: AdapterInputs; readonly training: boolean }): void {
    let batch: ConditionBatch | null = null;
    try {
      batch = this.withAdapterName(() => {
        const given = Object.hasOwn(context.inputs, 'condition') ? context.inputs['condition'] : undefined;
        const input = given ?? this.defaultCondition;
        if (input === undefined || input === null) throw this.noConditionError(context.inputs);
        return batchConditions(this.config.condition, input as ConditionInput, {
          dropout: context.training ? this.config.conditionDropout : 0,
          random: this.random,
        });
      });
    } finally {
      // Pushed also on failure: core calls endForward for a state whose beginForward threw, and it
      // must pop this entry, not an enclosing pass's.
      this.passes.push({ batch, generated: null });
    }
  }

  /** Called after the forward pass (also on error, and after a `beginForward` that threw): frees what the pass generated. */
  endForward(): void {
    const pass = this.passes.pop();
    if (pass?.generated) tf.dispose(pass.generated.owned);
  }

  /** The distinct conditions of the innermost forward pass in progress (keys), or null outside one. */
  currentConditionKeys(): readonly string[] | null {
    return this.passes[this.passes.length - 1]?.batch?.keys ?? null;
  }

  /** The dataIds of the variables now: `variable.assign` replaces a variable's dataId. */
  private weightIds(): object[] {
    return this.variables.map((variable) => variable.dataId as object);
  }

  private sameWeights(ids: readonly object[]): boolean {
    for (let i = 0; i < this.variables.length; i++) if (this.variables[i]!.dataId !== ids[i]) return false;
    return true;
  }

  /**
   * Drop the cache when a generator variable was reassigned since it was filled. Why dataIds, and
   * not "drop it after any forward under a gradient tape": every update path of ours goes through
   * `variable.assign`, which gives the variable a new dataId: core's `AdamW` (its fused WASM kernel
   * writes new output tensors, then assigns them; so does the composite form), `@lora/quant`'s
   * `AdamW8bit` (core's AdamW with 8-bit moments), `loadAdapter`, a checkpoint restore and a plain
   * `variable.assign(…)` by hand. A tape-based rule would miss the last three (no taped forward
   * precedes them) and drop the cache for taped forwards that change nothing. Comparing ~20–100
   * object references per forward pass costs nothing next to the pass itself.
   */
  private syncCache(): void {
    if (!this.sameWeights(this.cacheWeights)) this.invalidate();
  }

  /** Run `fn`, rewriting a condition ConfigError so that it names this adapter rather than saying "Invalid config". */
  private withAdapterName<T>(fn: () => T): T {
    try {
      return fn();
    } catch (error) {
      if (!(error instanceof ConfigError) || error.plugin !== 'hyper' || !/^condition\b/u.test(error.field) || /^\[@lora\/hyper\] HyperLoRA adapter /u.test(error.message)) throw error;
      const named = new ConfigError({ plugin: 'hyper', field: error.field, received: error.received, expected: error.expected, hint: error.hint, cause: error });
      named.message = `[@lora/hyper] HyperLoRA adapter "${this.adapterName}": ${error.message.replace(/^\[[^\]]*\] Invalid config: /u, '')}`;
      throw named;
    }
  }

  private noConditionError(inputs: AdapterInputs): ConfigError {
    const keys = Object.keys(inputs);
    const received = keys.length === 0 ? 'no adapter inputs' : `adapter inputs with keys ${keys.join(', ')}`;
    const example = exampleCondition(this.config);
    const hint =
      `Pass one per forward pass: peft.forward({ condition: ${example} }, x) or peft.withAdapterInputs({ condition }, () => model.forward(x)) (a list gives one per batch row), ` +
      `or set a default with peft.adapterState('${this.adapterName}').setDefaultCondition(…)` +
      (this.config.condition.kind === 'discrete' ? '; { condition: {} } runs every factor at its learned null embedding.' : '.');
    const error = new ConfigError({ plugin: 'hyper', field: 'condition', received: inputs['condition'], expected: `given (inputs.condition)`, hint });
    error.message = `[@lora/hyper] HyperLoRA adapter "${this.adapterName}" got no condition (${received}). ${hint}`;
    return error;
  }

  /** Check a layer's input against a per-row list before anything is generated. */
  private checkRows(batch: ConditionBatch, inputShape: readonly number[], modulePath: string | undefined): void {
    if (batch.rows === null) return;
    if (inputShape.length >= 2 && inputShape[0] === batch.rows) return;
    throw new ShapeError(
      `[@lora/hyper] HyperLoRA adapter "${this.adapterName}"${modulePath ? ` at ${modulePath}` : ''}: inputs.condition is a list of ${batch.rows} (one condition per batch row), ` +
        `so the input's first axis must be ${batch.rows}; pass one condition per row, or one condition object (not a list) for the whole batch`,
      [batch.rows, null],
      inputShape,
    );
  }

  /** The pass's factors, generated now if not yet, or again if the weights or the gradient tape changed since. */
  private passFactors(pass: CurrentForward & { batch: ConditionBatch }): Generated {
    const tape = activeTape();
    let generated = pass.generated;
    if (generated && (generated.tape !== tape || !this.sameWeights(generated.weights))) {
      // Reused across an optimizer step or into another gradient computation they would be stale,
      // or give the generator no gradient: regenerate.
      tf.dispose(generated.owned);
      generated = pass.generated = null;
    }
    if (!generated) generated = pass.generated = this.generateFor(pass.batch, tape);
    return generated;
  }

  private generateFor(batch: ConditionBatch, tape: object | null): Generated {
    const weights = this.weightIds();
    const owned: tf.Tensor[] = [];
    let factors: readonly GeneratedFactors[];
    // Never from the cache under a gradient tape: the generator must be on the tape.
    if (tape === null && this.cache.budgetBytes > 0) {
      this.syncCache();
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
      owned.push(...flatten(factors));
    }
    const rowIndex = batch.rowToUnique === null ? null : tf.tensor1d(batch.rowToUnique, 'int32');
    if (rowIndex) owned.push(rowIndex);
    // Made inside the first layer's tidy, used by every layer of the pass: kept until endForward.
    for (const tensor of owned) tf.keep(tensor);
    return { factors, rowIndex, owned, weights, tape };
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
   * The factors target `targetIndex` uses now: those of the current forward pass (generated at its
   * first layer, after checking `options.inputShape` against a per-row list), or, for a forward
   * that did not go through `beginForward` (`model.forward(x)` outside `withAdapterInputs`), the
   * default condition's (generated for this target alone inside the caller's scope when taping or
   * when the cache cannot hold it). The tensors belong to the pass or the cache: do not dispose them.
   * @throws {ConfigError} when no condition was given and there is no default; {ShapeError} when
   *   the input's first axis does not match a per-row list (nothing is generated then).
   */
  factorsFor(targetIndex: number, options: FactorsForOptions = {}): ForwardFactors {
    const pass = this.passes[this.passes.length - 1];
    if (pass) {
      if (pass.batch === null) {
        throw new LoraError(`[@lora/hyper] HyperLoRA adapter "${this.adapterName}": this forward pass's beginForward failed; call endForward before the next pass.`, { plugin: 'hyper' });
      }
      if (options.inputShape) this.checkRows(pass.batch, options.inputShape, options.modulePath);
      const generated = this.passFactors(pass as CurrentForward & { batch: ConditionBatch });
      const { a, b } = generated.factors[targetIndex]!;
      return { a, b, rowIndex: generated.rowIndex };
    }
    if (this.defaultCondition === undefined) throw this.noConditionError({});
    const condition = this.withAdapterName(() => resolveCondition(this.config.condition, this.defaultCondition));
    if (activeTape() === null && this.cache.budgetBytes > 0) {
      this.syncCache();
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
    const resolved = this.withAdapterName(() => resolveCondition(this.config.condition, condition));
    return tf.tidy(() => {
      const [factors] = this.generator.generate(this.encoder.encode([resolved]), [targetIndex]);
      return tf.mul(tf.matMul(tf.squeeze(factors!.b, [0]) as tf.Tensor2D, tf.squeeze(factors!.a, [0]) as tf.Tensor2D), this.scaling) as tf.Tensor2D;
    });
  }

  /**
   * PEFT LoRA factors of every target for one condition, extra gains folded into B:
   * lora_A [r, in], lora_B [out, r] with ΔW = s·lora_B·lora_A. `undefined` (or `{}`) is every
   * factor at its learned null embedding. The caller disposes them.
   * @throws {ConfigError} for an unknown factor or value.
   */
  exportFactors(condition: Condition | undefined): {
    /** Dotted path of the target layer. */
    modulePath: string;
    /** PEFT's `lora_A` [r, in]. */
    loraA: tf.Tensor2D;
    /** PEFT's `lora_B` [out, r], any extra gain folded in (not the scaling s). */
    loraB: tf.Tensor2D;
  }[] {
    const resolved = this.withAdapterName(() => resolveCondition(this.config.condition, condition));
    const factors = tf.tidy(() => this.generator.exportFactors(this.encoder.encode([resolved])).flatMap(({ loraA, loraB }) => [loraA, loraB]));
    return this.plan.targets.map((target, j) => ({ modulePath: target.modulePath, loraA: factors[2 * j] as tf.Tensor2D, loraB: factors[2 * j + 1] as tf.Tensor2D }));
  }

  /**
   * Record an adapter layer that uses this state (each {@link HyperLoraAdapter} does, when created).
   * When the last one is detached (its layer disposed, e.g. by `model.dispose()` on the wrapped
   * model), the state disposes itself, so the generator is freed with the model.
   */
  attachLayer(layer: object): void {
    this.layers.add(layer);
  }

  /** Forget an adapter layer ({@link HyperLoraState.attachLayer}); the last one out disposes the state. */
  detachLayer(layer: object): void {
    if (this.layers.delete(layer) && this.layers.size === 0) this.dispose();
  }

  /** Whether the state has been disposed (its generator freed). */
  get isDisposed(): boolean {
    return this.disposed;
  }

  /** Free the generator, the encoder and the cache. Idempotent: the AdapterModel and the last layer may both call it. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    while (this.passes.length > 0) this.endForward();
    this.cache.dispose();
    this.encoder.dispose();
    this.generator.dispose();
  }
}
