import { LoraError, type AdapterModel, type AdapterPlugin, type TrainingHooks } from '@lora/core';
import {
  ADALORA_PLUGIN_NAME,
  adaLoraConfigFromPeftJson,
  adaLoraConfigToPeftJson,
  parseAdaLoraConfig,
  type AdaLoraConfig,
} from './adalora-config.js';
import { AdaLoraAdapter, isAdaLoraAdapter, type RankPatternForm } from './adalora-layer.js';
import { orthogonalRegularization } from './orthogonal-regularizer.js';
import { RankAllocator, type RankHistory } from './rank-allocator.js';

/** Options for the {@link adalora} factory. */
export interface AdaLoraPluginOptions {
  /** Seed for adapter initialisation (each module gets its own offset) and for rank growth. Default: unseeded. */
  readonly seed?: number;
}

/**
 * What the plugin keeps per adapter. Core hands plugins the adapter's config object (the same one
 * in `createAdapter`, `trainingHooks` and `toPeftJson`), so the state is keyed by it.
 */
interface AdapterState {
  readonly modules: Map<string, AdaLoraAdapter>;
  allocator: RankAllocator | null;
  /** Set while `saveAdaLoraAdapter` builds the config: the rank pattern then describes pruned tensors. */
  patternForm: RankPatternForm;
  readonly seed: number | undefined;
}

const STATES = new WeakMap<AdaLoraConfig, AdapterState>();

function stateOf(config: AdaLoraConfig, seed?: number): AdapterState {
  let state = STATES.get(config);
  if (!state) {
    state = { modules: new Map(), allocator: null, patternForm: 'physical', seed };
    STATES.set(config, state);
  }
  return state;
}

function liveModules(state: AdapterState): [string, AdaLoraAdapter][] {
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
function rankPatternOf(config: AdaLoraConfig, state: AdapterState | undefined): Record<string, boolean[]> | null {
  const modules = state ? liveModules(state) : [];
  if (!state || modules.length === 0) return config.rankPattern === null ? null : structuredClone(config.rankPattern) as Record<string, boolean[]>;
  const pattern: Record<string, boolean[]> = {};
  let complete = true;
  for (const [path, adapter] of modules) {
    const rows = adapter.rankPattern(state.patternForm);
    pattern[`${path}.lora_E`] = rows;
    complete &&= rows.length === config.initR && rows.every(Boolean);
  }
  return complete && config.rankPattern === null ? null : pattern;
}

/**
 * The AdaLoRA adapter plugin (PEFT's `AdaLoraConfig`, `peft_type: "ADALORA"`): SVD-form adapters
 * whose rank budget is allocated by importance during training.
 *
 * Training hooks (collected by `adapterModel.trainingHooks()`, run by core's `train({ hooks })`):
 * `extraLoss` adds the orthogonal regulariser; `afterStep` runs the rank allocator after each
 * optimizer step, with PEFT's 0-based global step = the trainer's step − 1.
 *
 * Core's `saveAdapter` (or {@link saveAdaLoraAdapter}) writes PEFT's pruned files, through the
 * adapter's `tensorsForSave` hook and a `rank_pattern` describing them.
 *
 * @example
 * const registry = createLoraRegistry({ plugins: [lora(), adalora()] });
 * const peft = AdapterModel.create(model, {
 *   registry, plugin: 'adalora',
 *   config: { initR: 12, targetR: 4, totalStep: 1000, tinit: 100, tfinal: 200, targetModules: ['c_attn'] },
 * });
 * await train({ model: peft.model, hooks: peft.trainingHooks(), steps: 1000, trainData, lossFn });
 */
export function adalora(options: AdaLoraPluginOptions = {}): AdapterPlugin<AdaLoraConfig> {
  let created = 0;
  return {
    specificationVersion: 'v1',
    kind: 'adapter',
    name: ADALORA_PLUGIN_NAME,
    packageName: '@lora/adalora',
    peftType: 'ADALORA',
    compatibility: { transforms: ['quant'] },
    parseConfig(input) {
      return parseAdaLoraConfig(input);
    },
    fromPeftJson(json) {
      return adaLoraConfigFromPeftJson(json);
    },
    toPeftJson(config, context) {
      const state = STATES.get(config);
      // When saving (core passes the instances), the pattern describes the pruned tensors that
      // tensorsForSave() writes; otherwise the rows each module holds.
      if (context && state) return withPatternForm(state, 'pruned', () => adaLoraConfigToPeftJson(config, rankPatternOf(config, state)));
      return adaLoraConfigToPeftJson(config, rankPatternOf(config, state));
    },
    claimsPeftConfig(json) {
      return json.peft_type === 'ADALORA';
    },
    createAdapter({ base, modulePath, adapterName, config }) {
      const seed = options.seed === undefined ? undefined : options.seed + created * 3;
      created += 1;
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
      stateOf(config, options.seed).modules.set(modulePath, adapter);
      return adapter;
    },
    trainingHooks(context): TrainingHooks {
      const { config } = context;
      if (config.inferenceMode) return {};
      const state = stateOf(config, options.seed);
      const modules = (): [string, AdaLoraAdapter][] =>
        context.instances().filter((pair): pair is [string, AdaLoraAdapter] => isAdaLoraAdapter(pair[1]));
      return {
        extraLoss() {
          return orthogonalRegularization(
            modules().map(([, adapter]) => adapter),
            { weight: config.orthRegWeight, form: config.orthogonalRegularizer },
          );
        },
        afterStep({ step, gradients }) {
          state.allocator ??= new RankAllocator({ config, modules: modules(), seed: state.seed });
          state.allocator.updateAndAllocate(step - 1, gradients);
        },
      };
    },
  };
}

function adaLoraEntry(adapterModel: AdapterModel, adapterName: string): { config: AdaLoraConfig; state: AdapterState } {
  const { plugin, config } = adapterModel.adapterConfig(adapterName);
  if (plugin.peftType !== 'ADALORA') {
    throw new LoraError(`[adalora] Adapter "${adapterName}" is ${plugin.name}, not AdaLoRA.`, { plugin: ADALORA_PLUGIN_NAME });
  }
  const adaConfig = config as AdaLoraConfig;
  const state = stateOf(adaConfig);
  // Adapters made by another copy of the plugin: collect the modules from the model.
  if (state.modules.size === 0) {
    for (const [path, instance] of adapterModel.adapterInstances(adapterName)) if (isAdaLoraAdapter(instance)) state.modules.set(path, instance);
  }
  return { config: adaConfig, state };
}

/**
 * The rank allocator of an AdaLoRA adapter (created on first use), for hand-written training loops
 * — call `allocator.updateAndAllocate(globalStep, gradients)` after each optimizer step — and for
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
  state.allocator ??= new RankAllocator({ config, modules: liveModules(state), seed: state.seed });
  return state.allocator;
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
  return withPatternForm(state, 'pruned', () => rankPatternOf(config, state));
}

/** Run `fn` with the rank pattern describing pruned tensors (used while saving). */
function withPatternForm<T>(state: AdapterState, form: RankPatternForm, fn: () => T): T {
  const previous = state.patternForm;
  state.patternForm = form;
  try {
    return fn();
  } finally {
    state.patternForm = previous;
  }
}

export type { AdapterState };
