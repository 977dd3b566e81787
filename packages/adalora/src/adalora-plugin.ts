import {
  LoraError,
  PLUGIN_SPECIFICATION_VERSION,
  type AdapterModel,
  type AdapterPlugin,
  type AdapterState,
  type PeftConfigJson,
  type TrainingHooks,
} from '@lora/core';
import {
  ADALORA_PLUGIN_NAME,
  adaLoraConfigFromPeftJson,
  adaLoraConfigToPeftJson,
  parseAdaLoraConfig,
  type AdaLoraConfig,
} from './adalora-config.js';
import { AdaLoraAdapter, type RankPatternForm } from './adalora-layer.js';
import { orthogonalRegularization } from './orthogonal-regularizer.js';
import { RankAllocator, type RankHistory } from './rank-allocator.js';

/** Options for the {@link adalora} factory. */
export interface AdaLoraPluginOptions {
  /** Seed for adapter initialisation (each module gets its own offset) and for rank growth. Default: unseeded. */
  readonly seed?: number;
}

/**
 * AdaLoRA's adapter-level object (PEFT's `AdaLoraModel` role), owned by core's `AdapterModel`: the
 * adapter's modules and its rank allocator, created with the adapter and gone with it.
 */
class AdaLoraState implements AdapterState {
  readonly modules = new Map<string, AdaLoraAdapter>();
  allocator: RankAllocator | null = null;

  constructor(
    readonly adapterName: string,
    readonly config: AdaLoraConfig,
    readonly seed: number | undefined,
  ) {}

  /** The regulariser and the rank allocation, when the adapter trains; the allocator's state is checkpointed with the run. */
  trainingHooks(): TrainingHooks {
    if (this.config.inferenceMode) return {};
    const adapters = (): AdaLoraAdapter[] => liveModules(this).map(([, adapter]) => adapter);
    const key = `adalora.${this.adapterName}`;
    return {
      extraLoss: () => orthogonalRegularization(adapters(), { weight: this.config.orthRegWeight, form: this.config.orthogonalRegularizer }),
      afterStep: async ({ step, gradients }) => {
        // PEFT's global step is 0-based; the trainer's is 1-based. The scores are read with
        // `await data()`, so AdaLoRA trains on GPU backends without stalling them.
        await this.allocatorOrCreate().updateAndAllocateAsync(step - 1, gradients);
      },
      checkpoint: {
        key,
        state: () => this.allocatorOrCreate().checkpointState(),
        restore: (state, { source }) => this.allocatorOrCreate().restoreCheckpointState(state, source, `hook state "${key}"`),
      },
    };
  }

  allocatorOrCreate(): RankAllocator {
    this.allocator ??= new RankAllocator({ config: this.config, modules: liveModules(this), seed: this.seed });
    return this.allocator;
  }

  /** When saved, the rank pattern describes the pruned tensors `tensorsForSave()` writes. */
  peftJsonForSave(json: PeftConfigJson): PeftConfigJson {
    return { ...json, rank_pattern: rankPatternOf(this.config, this, 'pruned') };
  }

  dispose(): void {
    this.modules.clear();
    this.allocator = null;
  }
}

function isAdaLoraState(state: AdapterState | undefined): state is AdaLoraState {
  return state instanceof AdaLoraState;
}

function liveModules(state: AdaLoraState): [string, AdaLoraAdapter][] {
  return [...state.modules].filter(([, adapter]) => !adapter.disposed);
}

/** The module's saved pattern: PEFT writes it keyed `<path>.lora_E` (the in-memory key adds `.<adapter>`). */
function patternFor(config: AdaLoraConfig, modulePath: string, adapterName: string): readonly boolean[] | undefined {
  return config.rankPattern?.[`${modulePath}.lora_E`] ?? config.rankPattern?.[`${modulePath}.lora_E.${adapterName}`];
}

/**
 * The rank pattern to write for an adapter: per module, `<path>.lora_E` → booleans. In the
 * `physical` form (what core's `saveAdapter` writes: every row the adapter holds) it is null when
 * every module holds all its initR rows and the config had none, as PEFT writes before any allocation.
 */
function rankPatternOf(config: AdaLoraConfig, state: AdaLoraState | undefined, form: RankPatternForm): Record<string, boolean[]> | null {
  const modules = state ? liveModules(state) : [];
  if (!state || modules.length === 0) return config.rankPattern === null ? null : structuredClone(config.rankPattern) as Record<string, boolean[]>;
  const pattern: Record<string, boolean[]> = {};
  let complete = true;
  for (const [path, adapter] of modules) {
    const rows = adapter.rankPattern(form);
    pattern[`${path}.lora_E`] = rows;
    complete &&= rows.length === config.initR && rows.every(Boolean);
  }
  return complete && config.rankPattern === null ? null : pattern;
}

/**
 * The AdaLoRA adapter plugin (PEFT's `AdaLoraConfig`, `peft_type: "ADALORA"`): SVD-form adapters
 * whose rank budget is allocated by importance during training.
 *
 * The adapter-level state (core's `AdapterState`, one per adapter) holds the rank allocator and the
 * training hooks, which core's `train({ model: adapterModel })` runs by itself: `extraLoss` adds the
 * orthogonal regulariser; `afterStep` runs the rank allocator after each optimizer step, with
 * PEFT's 0-based global step = the trainer's step − 1.
 *
 * Core's `saveAdapter` (or {@link saveAdaLoraAdapter}) writes PEFT's pruned files, through the
 * adapter's `tensorsForSave` hook and a `rank_pattern` describing them (the state's `peftJsonForSave`).
 *
 * @example
 * const registry = createLoraRegistry({ plugins: [lora(), adalora()] });
 * const peft = AdapterModel.create(model, {
 *   registry, plugin: 'adalora',
 *   config: { initR: 12, targetR: 4, totalStep: 1000, tinit: 100, tfinal: 200, targetModules: ['c_attn'] },
 * });
 * await train({ model: peft, steps: 1000, trainData, lossFn });
 */
export function adalora(options: AdaLoraPluginOptions = {}): AdapterPlugin<AdaLoraConfig> {
  return {
    specificationVersion: PLUGIN_SPECIFICATION_VERSION,
    kind: 'adapter',
    name: ADALORA_PLUGIN_NAME,
    packageName: '@lora/adalora',
    peftType: 'ADALORA',
    parseConfig(input) {
      return parseAdaLoraConfig(input);
    },
    fromPeftJson(json) {
      return adaLoraConfigFromPeftJson(json);
    },
    toPeftJson(config, context) {
      // The rows each module holds; a save adjusts it through the state's peftJsonForSave.
      const state = context?.state;
      return adaLoraConfigToPeftJson(config, rankPatternOf(config, isAdaLoraState(state) ? state : undefined, 'physical'));
    },
    claimsPeftConfig(json) {
      return json.peft_type === 'ADALORA';
    },
    savedRank: (shapes) => shapes.get('lora_E')?.[0] ?? null,
    createAdapterState({ adapterName, config }) {
      return new AdaLoraState(adapterName, config, options.seed);
    },
    createAdapter({ base, modulePath, adapterName, config, index, state }) {
      const seed = options.seed === undefined ? undefined : options.seed + index * 3;
      const pattern = patternFor(config, modulePath, adapterName);
      const adapter = new AdaLoraAdapter({
        inFeatures: base.inFeatures,
        outFeatures: base.outFeatures,
        initR: config.initR,
        loraAlpha: config.loraAlpha,
        dropout: config.loraDropout,
        init: config.initLoraWeights,
        seed,
        rankPattern: pattern,
        liveRows: pattern === undefined && config.growth ? config.growth.startRank : undefined,
      });
      if (isAdaLoraState(state)) state.modules.set(modulePath, adapter);
      return adapter;
    },
  };
}

function adaLoraEntry(adapterModel: AdapterModel, adapterName: string): { config: AdaLoraConfig; state: AdaLoraState } {
  const { plugin, config } = adapterModel.adapterConfig(adapterName);
  const state = adapterModel.adapterState(adapterName);
  if (plugin.peftType !== 'ADALORA' || !isAdaLoraState(state)) {
    throw new LoraError(`[adalora] Adapter "${adapterName}" is ${plugin.name}, not AdaLoRA.`, { plugin: ADALORA_PLUGIN_NAME });
  }
  return { config: config as AdaLoraConfig, state };
}

/**
 * The rank allocator of an AdaLoRA adapter (created on first use), for hand-written training loops
 * — call `allocator.updateAndAllocate(globalStep, gradients)` after each optimizer step (or
 * `await allocator.updateAndAllocateAsync(…)` on a GPU backend) — and for
 * its importance scores and history. Core's trainer with `adapterModel.trainingHooks()` drives the
 * same allocator.
 * @throws {LoraError} when the adapter is not AdaLoRA or is frozen (`inferenceMode`).
 */
export function adaLoraAllocator(adapterModel: AdapterModel, adapterName = 'default'): RankAllocator {
  const { config, state } = adaLoraEntry(adapterModel, adapterName);
  if (config.inferenceMode) {
    throw new LoraError(`[adalora] Adapter "${adapterName}" is frozen (inference mode); only a trainable adapter has a rank allocator.`, {
      plugin: ADALORA_PLUGIN_NAME,
    });
  }
  return state.allocatorOrCreate();
}

/** The per-step rank history of an AdaLoRA adapter's allocator, or null if it has not run. */
export function adaLoraRankHistory(adapterModel: AdapterModel, adapterName = 'default'): RankHistory | null {
  return adaLoraEntry(adapterModel, adapterName).state.allocator?.history() ?? null;
}

/**
 * The rank pattern PEFT would store in the config now (`<path>.lora_E` → kept flags): the last
 * allocation's mask, or, before any, the rows each module holds; null when nothing was pruned or
 * resized (as PEFT's `rank_pattern: null`).
 */
export function adaLoraRankPattern(adapterModel: AdapterModel, adapterName = 'default'): Readonly<Record<string, readonly boolean[]>> | null {
  const { config, state } = adaLoraEntry(adapterModel, adapterName);
  return rankPatternOf(config, state, 'pruned');
}


