import * as tf from '@tensorflow/tfjs-core';
import { addMany } from './add-many.js';
import { AdapterLayer, ModulesToSaveWrapper, type AdapterLayerHost } from './adapter-layer.js';
import { holdsNonFloatWeight, isBaseLayer, type BaseLayer } from './base-layer.js';
import { ConfigError, LoraError } from './errors.js';
import { replaceLayers, swapLayers } from './layer-replacement.js';
import { Linear } from './linear.js';
import type { LoraAdapter } from './lora-layer.js';
import type { LoraConfig } from './lora-config.js';
import type { Module } from './module.js';
import type { AdapterConfigBase, AdapterInputs, AdapterInstance, AdapterPlugin, AdapterState, BaseTransform, TrainingHooks } from './plugin.js';
import type { LoraRegistry } from './registry.js';
import { thinSvd } from './svd.js';
import { isTargetModule, layerIndexOf } from './target-matching.js';
import type { TrainingTarget } from './training-target.js';

/** A model that says which modules are its output head and which it targets by default. */
export interface AdapterTargetHints {
  /** Paths of output heads never targeted by `all-linear` (default `['lm_head']`). */
  readonly outputHeadPaths?: readonly string[];
  /** Target modules when a config gives none (PEFT's per-architecture defaults, e.g. `['c_attn']`). */
  readonly defaultTargetModules?: readonly string[];
}

/** Options for {@link AdapterModel.create}. */
export interface CreateAdapterModelOptions {
  /** The registry holding the adapter plugin and any `transforms` (from `createLoraRegistry`). */
  readonly registry: LoraRegistry;
  /** Adapter plugin name (default `lora`). */
  readonly plugin?: string;
  /** The plugin's options (camelCase), validated by the plugin. */
  readonly config: unknown;
  /** Default `default`, as PEFT. */
  readonly adapterName?: string;
  /** Base transforms applied first (QLoRA: `['quant']`). */
  readonly transforms?: readonly string[];
}

/** Options for {@link AdapterModel.addWeightedAdapter}. */
export interface WeightedAdapterOptions {
  /** Names of the existing plain LoRA adapters to combine (at least one). */
  readonly adapters: readonly string[];
  /** One weight per entry of `adapters`, in the same order, multiplying that adapter's ΔW (may be negative). */
  readonly weights: readonly number[];
  /** Name of the new adapter; must not exist yet (letters, digits, `_` or `-`). */
  readonly adapterName: string;
  /**
   * `cat` (exact, rank Σrᵢ, as PEFT), `linear` (PEFT's: A and B combined separately, exact only for one
   * adapter), or `svd`: the exact Σ wᵢ·ΔWᵢ truncated by SVD to `svdRank`. Unlike PEFT's `svd`, which
   * applies each adapter's scaling twice (Σ wᵢ sᵢ² BᵢAᵢ), ours uses ΔWᵢ = sᵢ·BᵢAᵢ once.
   */
  readonly combinationType: 'cat' | 'linear' | 'svd';
  /** Rank for `svd` (default: the largest source rank). */
  readonly svdRank?: number;
}

/** Parameter counts, as PEFT's `print_trainable_parameters`. */
export interface TrainableParameterReport {
  /** Scalar parameters in trainable variables (PEFT's `trainable params`), shared variables counted once. */
  readonly trainable: number;
  /** All scalar parameters, frozen ones and packed 4-bit weights included (PEFT's `all params`). */
  readonly total: number;
  /** 100 · trainable / total. */
  readonly percent: number;
  /** `trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330` */
  readonly line: string;
}

interface AdapterEntry {
  readonly plugin: AdapterPlugin;
  readonly config: AdapterConfigBase;
  /** Targets as PEFT saves them: `all-linear` expanded to full names. */
  readonly targetModules: readonly string[] | string;
  readonly modulesToSave: readonly string[];
  /** The plugin's adapter-level object, if it has one. */
  readonly state: AdapterState | undefined;
}

type ForwardParameters<M> = M extends { forward(...args: infer A): unknown } ? A : never;
type ForwardResult<M> = M extends { forward(...args: never[]): infer R } ? R : never;

const NO_INPUTS: AdapterInputs = Object.freeze({});
const ADAPTER_NAME = /^[A-Za-z0-9_-]+$/u;

/**
 * What wrapping `model` in an AdapterModel changes before any adapter exists (its parameters'
 * trainable flags, its adapter-input scope), as a function that puts it back: for a wrap whose
 * first adapter is refused, so the user's model is left as it was.
 */
export function wrappingUndo(model: Module): () => void {
  const trainable = model.namedParameters().map(([, variable]) => [variable, variable.trainable] as const);
  const scope = model.adapterInputScope;
  return () => {
    for (const [variable, flag] of trainable) variable.trainable = flag;
    model.adapterInputScope = scope;
  };
}

/**
 * PEFT's `PeftModel` for a module tree: injects adapters into target layers by PEFT's matching
 * rules, holds several named adapters, switches, disables, merges, combines them, and counts
 * parameters. Saving and loading live in `saveAdapter` / `loadAdapter`.
 *
 * The wrapped model is used as before (`model.forward(…)`): its target layers are replaced in place.
 *
 * @example
 * const registry = createLoraRegistry({ plugins: [lora()] });
 * const peft = AdapterModel.create(model, { registry, config: { r: 8, loraAlpha: 16, targetModules: ['c_attn'] } });
 * console.log(peft.trainableParameters().line);
 */
export class AdapterModel<M extends Module = Module> implements AdapterLayerHost, TrainingTarget {
  readonly model: M;
  /** The registry adapter plugins are looked up in (by `addAdapter`, `loadAdapter`). */
  readonly registry: LoraRegistry;
  private readonly entries = new Map<string, AdapterEntry>();
  private active: string[] = [];
  private disabledDepth = 0;
  private disposed = false;
  private currentInputs: AdapterInputs = NO_INPUTS;

  /**
   * Wrap `model` (its parameters are frozen; adapters come with `addAdapter` or `loadAdapter`).
   * @throws {LoraError} when the model is already wrapped by an AdapterModel (it holds adapter layers): a second one would take over and break the first's layers.
   */
  constructor(model: M, options: { registry: LoraRegistry }) {
    assertRegistry(options as { registry?: unknown } | undefined, 'new AdapterModel(model, { registry })');
    const wrapped = model.namedModules().filter(([, module]) => module instanceof AdapterLayer || module instanceof ModulesToSaveWrapper);
    if (wrapped.length > 0) {
      throw new LoraError(
        `[@lora/core] This model is already wrapped by an AdapterModel (adapter layers at ${wrapped
          .slice(0, 2)
          .map(([path]) => path)
          .join(', ')}${wrapped.length > 2 ? ', …' : ''}); add adapters to that AdapterModel (addAdapter, loadAdapter) or unload() it first.`,
      );
    }
    this.model = model;
    this.registry = options.registry;
    model.setTrainable(false);
    model.adapterInputScope = (inputs, fn) => this.withAdapterInputs(inputs, fn);
  }

  /** After `dispose()` every weight is freed: each use says so, instead of failing deep inside tfjs or doing nothing. */
  private assertLive(call: string): void {
    if (this.disposed) {
      throw new LoraError(`[@lora/core] AdapterModel.${call}: this AdapterModel was disposed, and its model's weights with it; load or create the model and the AdapterModel again.`);
    }
  }

  /** The per-forward adapter inputs of the pass in progress (`{}` outside one). */
  adapterInputs(): AdapterInputs {
    return this.currentInputs;
  }

  /** The adapter-level object of an adapter: undefined when its plugin has none, or no adapter has that name. */
  adapterState(name: string): AdapterState | undefined {
    return this.entries.get(name)?.state;
  }

  /**
   * Run `fn` (one forward pass of the model, or several, e.g. a generation loop) with per-forward
   * adapter inputs, e.g. `{ condition: [{ task: 'qa' }, { task: 'sum' }] }` with one entry per batch
   * row. Every active adapter's state is told before (`beginForward`, in the caller's scope, so it
   * takes part in the gradient tape) and after (`endForward`); its layers read the inputs through
   * `ApplyContext.inputs`. Nests: the inner inputs apply inside. Works with sync and async `fn`.
   *
   * @example
   * const logits = peft.withAdapterInputs({ condition }, () => model.forward(ids));
   */
  withAdapterInputs<T>(inputs: AdapterInputs, fn: () => T): T {
    this.assertLive('withAdapterInputs');
    const previous = this.currentInputs;
    const states = this.disabledDepth > 0 ? [] : this.active.map((name) => this.entries.get(name)?.state).filter((state) => state !== undefined);
    const training = this.model.training;
    this.currentInputs = inputs;
    const begun: AdapterState[] = [];
    const finish = (): void => {
      this.currentInputs = previous;
      for (const state of begun.reverse()) state.endForward?.();
    };
    let result: T;
    try {
      for (const state of states) {
        begun.push(state);
        state.beginForward?.({ inputs, training });
      }
      result = fn();
    } catch (error) {
      finish();
      throw error;
    }
    if (result instanceof Promise) return result.finally(finish) as T;
    finish();
    return result;
  }

  /**
   * The wrapped model's `forward` with per-forward adapter inputs:
   * `peft.forward({ condition }, ids, { attentionMask })` ≡ `peft.withAdapterInputs({ condition }, () => model.forward(ids, { attentionMask }))`.
   */
  forward(adapterInputs: AdapterInputs, ...args: ForwardParameters<M>): ForwardResult<M> {
    const forward = (this.model as unknown as { forward?: (...a: unknown[]) => unknown }).forward;
    if (typeof forward !== 'function') throw new LoraError(`[@lora/core] ${this.model.constructor.name} has no forward().`);
    return this.withAdapterInputs(adapterInputs, () => forward.apply(this.model, args) as ForwardResult<M>);
  }

  /**
   * Wrap `model`, apply base transforms, add one adapter and make it active and trainable
   * (PEFT's `get_peft_model`). The config and its targets are checked before anything changes: a
   * refused config leaves the model as it was (trainable flags included), and no base transform
   * (which cannot be undone: a quantized weight stays quantized) has run.
   * @throws {RegistryError} when the recipe's plugins are missing or do not compose; {ConfigError} on bad config or targets no layer matches; {LoraError} when the model is already wrapped.
   */
  static create<M extends Module>(model: M, options: CreateAdapterModelOptions): AdapterModel<M> {
    assertRegistry(options as { registry?: unknown } | undefined, 'AdapterModel.create(model, { registry, config })');
    const pluginName = options.plugin ?? 'lora';
    options.registry.assertRecipe({ adapter: pluginName, transforms: options.transforms ?? [] });
    const adapterName = options.adapterName ?? 'default';
    const restore = wrappingUndo(model);
    const adapterModel = new AdapterModel(model, { registry: options.registry });
    try {
      adapterModel.planAdapter(adapterName, { plugin: pluginName, config: options.config });
    } catch (error) {
      restore();
      throw error;
    }
    for (const name of options.transforms ?? []) adapterModel.applyBaseTransform(options.registry.transform(name));
    adapterModel.addAdapter(adapterName, { plugin: pluginName, config: options.config });
    adapterModel.setAdapter(adapterName);
    return adapterModel;
  }

  /** Replace the layers a base transform selects (e.g. 4-bit quantization). Returns the replaced paths. */
  applyBaseTransform(transform: BaseTransform): string[] {
    this.assertLive('applyBaseTransform');
    return replaceLayers(this.model, (path, module) => {
      if (module instanceof AdapterLayer || !isBaseLayer(module) || this.isInsideWrapper(path)) return null;
      if (!transform.shouldTransform(path, module, { model: this.model })) return null;
      return transform.transform(module, path).setTrainable(false);
    });
  }

  private isInsideWrapper(path: string): boolean {
    return /(^|\.)(base_layer|original_module|modules_to_save)(\.|$)/u.test(path);
  }

  /** Names of all adapters, in the order they were added. */
  get adapterNames(): string[] {
    return [...this.entries.keys()];
  }

  /** The active adapters (summed in forward). */
  get activeAdapters(): readonly string[] {
    return this.active;
  }

  /** The plugin and validated config of an adapter. @throws {LoraError} for an unknown name. */
  adapterConfig(name: string): {
    /** The adapter's plugin. */
    plugin: AdapterPlugin;
    /** The config as the plugin parsed it (its own config type, e.g. {@link LoraConfig}). */
    config: AdapterConfigBase;
    /** The targets as PEFT saves them: the model's defaults when the config gave none, `all-linear` expanded to module paths. */
    targetModules: readonly string[] | string;
  } {
    const entry = this.entries.get(name);
    if (!entry) throw new LoraError(`[@lora/core] No adapter named "${name}" (have: ${this.adapterNames.join(', ') || 'none'}).`);
    return entry;
  }

  /** Every adapter layer by module path. */
  adapterLayers(): [string, AdapterLayer][] {
    return this.model.namedModules().filter((pair): pair is [string, AdapterLayer] => pair[1] instanceof AdapterLayer);
  }

  /** Every modules_to_save wrapper by module path. */
  modulesToSaveWrappers(): [string, ModulesToSaveWrapper][] {
    return this.model
      .namedModules()
      .filter((pair): pair is [string, ModulesToSaveWrapper] => pair[1] instanceof ModulesToSaveWrapper);
  }

  /** The instances of one adapter by module path. */
  adapterInstances(name: string): [string, AdapterInstance][] {
    const result: [string, AdapterInstance][] = [];
    for (const [path, layer] of this.adapterLayers()) {
      const instance = layer.adapter(name);
      if (instance) result.push([path, instance]);
    }
    return result;
  }

  private expandTargets(config: AdapterConfigBase): readonly string[] | string {
    let targets = config.targetModules;
    if (targets === null) {
      const defaults = (this.model as Partial<AdapterTargetHints>).defaultTargetModules;
      if (!defaults) {
        throw new ConfigError({
          field: 'targetModules',
          received: null,
          expected: "a list of module names, a regex string, or 'all-linear'",
          hint: "This model has no default targets. Pass e.g. { targetModules: ['q_proj', 'v_proj'] }.",
        });
      }
      targets = defaults;
    }
    if (typeof targets === 'string' && targets.toLowerCase() === 'all-linear') {
      const heads = new Set((this.model as Partial<AdapterTargetHints>).outputHeadPaths ?? ['lm_head']);
      if (config.taskType === 'SEQ_CLS') {
        heads.add('classifier');
        heads.add('score');
      }
      const names: string[] = [];
      for (const [path, module] of this.model.namedModules()) {
        if (path === '' || this.isInsideWrapper(path)) continue;
        if (!(module instanceof AdapterLayer) && !isBaseLayer(module)) continue;
        const last = path.slice(path.lastIndexOf('.') + 1);
        if (heads.has(path) || heads.has(last)) continue;
        names.push(path);
      }
      return names;
    }
    return targets;
  }

  /**
   * Add an adapter: wrap every matching layer (or extend an existing wrapper) and create the
   * plugin's adapter there. The new adapter is not active and not trainable until `setAdapter`.
   * @throws {ConfigError} on an invalid config or when no module matches the targets.
   */
  addAdapter(name: string, options: { plugin?: string; config: unknown }): void {
    this.assertLive('addAdapter');
    const planned = this.planAdapter(name, options);
    const { plugin, targetModules, modulesToSave, matched } = planned;
    let { config } = planned;
    config = withPeftFanInFanOut(config, matched.map((path) => this.model.getSubmodule(path)));
    this.attachAdapter(name, plugin, config, targetModules, modulesToSave, matched);
  }

  /**
   * Everything `addAdapter` checks before it changes the model: the name, the config (parsed by the
   * plugin) and the layers its targets match.
   * @throws {ConfigError} on an invalid name or config or when no module matches the targets; {LoraError} for a name in use.
   */
  private planAdapter(
    name: string,
    options: { plugin?: string; config: unknown },
  ): { plugin: AdapterPlugin; config: AdapterConfigBase; targetModules: readonly string[] | string; modulesToSave: string[]; matched: string[] } {
    if (typeof name !== 'string' || !ADAPTER_NAME.test(name)) {
      throw new ConfigError({ field: 'adapterName', received: name, expected: 'letters, digits, _ or -', hint: "Use e.g. 'default'." });
    }
    if (this.entries.has(name)) throw new LoraError(`[@lora/core] An adapter named "${name}" exists already; delete it or pick another name.`);
    if ('lora_'.includes(name) || name === 'base_layer') {
      throw new ConfigError({ field: 'adapterName', received: name, expected: 'a name that is not part of "lora_"', hint: "Use e.g. 'default'." });
    }
    const plugin = this.registry.adapter(options.plugin ?? 'lora');
    const config = plugin.parseConfig(options.config);
    const targetModules = this.expandTargets(config);
    const selection = { ...config, targetModules };
    const modulesToSave = [...(config.modulesToSave ?? [])];
    if (config.taskType === 'SEQ_CLS') for (const head of ['classifier', 'score']) if (!modulesToSave.includes(head)) modulesToSave.push(head);
    const selectionWithSave = { ...selection, modulesToSave };

    const matched: string[] = [];
    for (const [path, module] of this.model.namedModules()) {
      if (path === '' || this.isInsideWrapper(path)) continue;
      if (!(module instanceof AdapterLayer) && !isBaseLayer(module)) continue;
      if (isTargetModule(path, selectionWithSave)) matched.push(path);
    }
    if (matched.length === 0 && selection.layersToTransform !== null) {
      // The targets exist, in layers the restriction leaves out: say so, rather than blame the names.
      const layers = new Set<number>();
      for (const [path, module] of this.model.namedModules()) {
        if (path === '' || this.isInsideWrapper(path) || !(module instanceof AdapterLayer || isBaseLayer(module))) continue;
        if (!isTargetModule(path, { ...selectionWithSave, layersToTransform: null })) continue;
        const index = layerIndexOf(path, selection.layersPattern);
        if (index !== null) layers.add(index);
      }
      if (layers.size > 0) {
        throw new ConfigError({
          plugin: plugin.name,
          field: 'layersToTransform',
          received: selection.layersToTransform,
          expected: 'layer indices holding the targets',
          hint: `The targets are in layers ${[...layers].sort((a, b) => a - b).join(', ')}.`,
        });
      }
    }
    if (matched.length === 0) {
      const examples = this.model
        .namedModules()
        .filter(([path, module]) => path !== '' && isBaseLayer(module) && !this.isInsideWrapper(path))
        .slice(0, 6)
        .map(([path]) => path);
      throw new ConfigError({
        plugin: plugin.name,
        field: 'targetModules',
        received: targetModules,
        expected: 'names matching at least one linear layer of the model',
        hint: `Linear layers here are named like: ${examples.join(', ') || '(none)'}.`,
      });
    }
    this.checkModulesToSave(modulesToSave);
    return { plugin, config, targetModules, modulesToSave, matched };
  }

  /** The part of `addAdapter` that changes the model: wrap the matched layers and create the adapter in each (all undone on failure). */
  private attachAdapter(
    name: string,
    plugin: AdapterPlugin,
    config: AdapterConfigBase,
    targetModules: readonly string[] | string,
    modulesToSave: string[],
    matched: readonly string[],
  ): void {
    const created: [string, AdapterLayer, boolean][] = [];
    let state: AdapterState | undefined;
    try {
      const targets = matched.map((path): [string, Module & BaseLayer] => {
        const module = this.model.getSubmodule(path);
        return [path, module instanceof AdapterLayer ? module.base_layer : (module as Module & BaseLayer)];
      });
      state = plugin.createAdapterState?.({ adapterName: name, config, targets });
      for (const [index, path] of matched.entries()) {
        const module = this.model.getSubmodule(path);
        let layer: AdapterLayer;
        let fresh = false;
        if (module instanceof AdapterLayer) layer = module;
        else {
          layer = new AdapterLayer(module as Module & BaseLayer, { modulePath: path, host: this });
          this.model.setSubmodule(path, layer);
          fresh = true;
        }
        layer.host = this;
        layer.modulePath = path;
        created.push([path, layer, fresh]);
        const instance = plugin.createAdapter({ base: layer.base_layer, modulePath: path, adapterName: name, config, index, state });
        for (const [, variable] of instance.namedTensors()) variable.trainable = false;
        layer.addAdapter(name, instance);
        layer.setActiveAdapters(this.active);
      }
      for (const [, variable] of state?.namedTensors?.() ?? []) variable.trainable = false;
      this.wrapModulesToSave(name, modulesToSave);
    } catch (error) {
      for (const [path, layer, fresh] of created) {
        if (layer.adapter(name)) layer.deleteAdapter(name);
        if (fresh) this.model.setSubmodule(path, layer.base_layer);
      }
      for (const [path, wrapper] of this.modulesToSaveWrappers()) {
        wrapper.deleteAdapter(name);
        if (wrapper.adapterNames.length === 0) this.model.setSubmodule(path, wrapper.original_module);
      }
      state?.dispose();
      throw error;
    }
    this.entries.set(name, { plugin, config, targetModules, modulesToSave, state });
    this.applyTrainableFlags();
  }

  /** The modules `modulesToSave` entries are matched against (PEFT's `_set_trainable`). */
  private modulesToSaveCandidates(): [string, Module][] {
    return this.model.namedModules().filter(([path, module]) => path !== '' && !this.isInsideWrapper(path) && !(module instanceof AdapterLayer));
  }

  /**
   * Every `modulesToSave` entry the user gave must match a module (checked by `planAdapter`, before
   * anything changes). PEFT's `_set_trainable`: a plain endswith, with no dot boundary.
   * @throws {ConfigError} naming the entries that match nothing.
   */
  private checkModulesToSave(modulesToSave: readonly string[]): void {
    if (modulesToSave.length === 0) return;
    const candidates = this.modulesToSaveCandidates();
    const unmatched = modulesToSave.filter((entry) => !candidates.some(([path]) => path.endsWith(entry)));
    // A task head the task type adds by default (`classifier` / `score`) may be absent; a name the user gave may not.
    const required = unmatched.filter((entry) => entry !== 'classifier' && entry !== 'score');
    if (required.length > 0) {
      throw new ConfigError({
        field: 'modulesToSave',
        received: required,
        expected: 'names of modules of the model',
        hint: `Modules here are named like: ${candidates.slice(0, 6).map(([path]) => path).join(', ') || '(none)'}.`,
      });
    }
  }

  private wrapModulesToSave(adapterName: string, modulesToSave: readonly string[]): void {
    if (modulesToSave.length === 0) return;
    const candidates = this.modulesToSaveCandidates();
    for (const [path, module] of candidates) {
      if (!modulesToSave.some((entry) => path.endsWith(entry))) continue;
      if (module instanceof ModulesToSaveWrapper && this.isInsideWrapper(path)) continue;
      let wrapper: ModulesToSaveWrapper;
      if (module instanceof ModulesToSaveWrapper) wrapper = module;
      else {
        wrapper = new ModulesToSaveWrapper(module);
        this.model.setSubmodule(path, wrapper);
      }
      if (!wrapper.copy(adapterName)) wrapper.addAdapter(adapterName);
    }
  }

  /**
   * Make one adapter, or several summed in order, active and trainable; all others inactive and frozen.
   * @throws {LoraError} for an unknown name, an empty list (use `disableAdapters` to run the base
   * model alone) or a name given twice (it would be applied twice).
   */
  setAdapter(names: string | readonly string[]): void {
    this.assertLive('setAdapter');
    const list = typeof names === 'string' ? [names] : [...names];
    if (list.length === 0) {
      throw new LoraError('[@lora/core] setAdapter([]) would leave no adapter active and nothing trainable; name at least one adapter, or run the base model alone with disableAdapters(fn).');
    }
    const twice = list.find((name, i) => list.indexOf(name) !== i);
    if (twice !== undefined) throw new LoraError(`[@lora/core] setAdapter: adapter "${twice}" is named twice; each active adapter is applied once, so name it once.`);
    for (const name of list) this.adapterConfig(name);
    for (const [, layer] of this.adapterLayers()) {
      if (layer.merged) layer.unmerge();
      layer.setActiveAdapters(list);
    }
    for (const [, wrapper] of this.modulesToSaveWrappers()) {
      wrapper.activeAdapter = list.find((name) => wrapper.copy(name)) ?? null;
    }
    this.active = list;
    this.applyTrainableFlags();
  }

  /** Every adapter's adapter-level variables, named `<adapter>::<key>`. */
  private stateVariables(): [string, tf.Variable][] {
    const result: [string, tf.Variable][] = [];
    for (const [name, entry] of this.entries) {
      for (const [key, variable] of entry.state?.namedTensors?.() ?? []) result.push([`${name}::${key}`, variable]);
    }
    return result;
  }

  /** The trainable variables of the model and of the adapters' adapter-level objects, by unique name (what `train()` trains). */
  namedTrainableVariables(): [string, tf.Variable][] {
    this.assertLive('namedTrainableVariables');
    return [...this.model.namedParameters(), ...this.stateVariables()].filter(([, variable]) => variable.trainable);
  }

  private applyTrainableFlags(): void {
    for (const [, variable] of [...this.model.namedParameters(), ...this.stateVariables()]) variable.trainable = false;
    for (const name of this.active) {
      const entry = this.entries.get(name);
      if (!entry || entry.config.inferenceMode) continue;
      for (const [, variable] of entry.state?.namedTensors?.() ?? []) variable.trainable = true;
      for (const [, instance] of this.adapterInstances(name)) {
        for (const [, variable] of instance.namedTensors()) variable.trainable = true;
      }
      for (const [, wrapper] of this.modulesToSaveWrappers()) wrapper.copy(name)?.setTrainable(true);
      if (entry.config.bias === 'all') {
        for (const [path, variable] of this.model.namedParameters()) {
          if (path.endsWith('.bias') && !/(^|\.)(original_module)\./u.test(path)) variable.trainable = true;
        }
      } else if (entry.config.bias === 'lora_only') {
        for (const [, layer] of this.adapterLayers()) {
          if (layer.adapter(name) && layer.base_layer.bias) layer.base_layer.bias.trainable = true;
        }
      }
    }
  }

  /**
   * Run `fn` with every adapter disabled (the base model alone), then restore. Works with sync and
   * async functions; nesting is allowed. Biases trained with `bias: 'all' | 'lora_only'` stay, as in PEFT.
   */
  disableAdapters<T>(fn: () => T): T {
    this.setDisabled(true);
    let result: T;
    try {
      result = fn();
    } catch (error) {
      this.setDisabled(false);
      throw error;
    }
    if (result instanceof Promise) {
      return result.finally(() => this.setDisabled(false)) as T;
    }
    this.setDisabled(false);
    return result;
  }

  private setDisabled(disabled: boolean): void {
    this.disabledDepth += disabled ? 1 : -1;
    const flag = this.disabledDepth > 0;
    for (const [, layer] of this.adapterLayers()) layer.disabled = flag;
    for (const [, wrapper] of this.modulesToSaveWrappers()) wrapper.disabled = flag;
  }

  /**
   * Delete an adapter and free its tensors. If it was active, the others stay active; if none remain
   * active, the alphabetically first remaining adapter is activated (as PEFT).
   * @throws {LoraError} when the adapter is merged.
   */
  deleteAdapter(name: string): void {
    this.assertLive('deleteAdapter');
    this.adapterConfig(name);
    for (const [path, layer] of this.adapterLayers()) {
      if (layer.mergedAdapters.includes(name)) {
        throw new LoraError(`[@lora/core] Adapter "${name}" is merged at ${path}; call unmerge() before deleting it.`);
      }
    }
    for (const [path, layer] of this.adapterLayers()) {
      layer.deleteAdapter(name);
      // A wrapper left without adapters goes, so the model's paths are as before the adapter came.
      if (layer.adapterNames.length === 0) this.model.setSubmodule(path, layer.base_layer);
    }
    for (const [path, wrapper] of this.modulesToSaveWrappers()) {
      wrapper.deleteAdapter(name);
      if (wrapper.adapterNames.length === 0) this.model.setSubmodule(path, wrapper.original_module);
    }
    this.entries.get(name)?.state?.dispose();
    this.entries.delete(name);
    const remaining = this.active.filter((n) => n !== name);
    if (remaining.length === 0 && this.entries.size > 0) remaining.push([...this.entries.keys()].sort()[0]!);
    this.active = [];
    if (remaining.length > 0) this.setAdapter(remaining);
  }

  /**
   * Merge adapters into the base weights (default: the active ones). All or nothing: when an adapter
   * cannot be merged in some layer (a HyperLoRA refuses, `safe` finds NaN), every merge this call
   * made, in any layer, is taken out again before the error is rethrown.
   * @returns notes from layers that cannot hold the merged weight exactly (quantized bases).
   * @throws {LoraError} for a name in `adapterNames` that is not an adapter (nothing is merged then).
   */
  merge(options: { adapterNames?: readonly string[]; safe?: boolean } = {}): string[] {
    this.assertLive('merge');
    // An unknown name would otherwise merge nothing, silently.
    for (const name of options.adapterNames ?? []) this.adapterConfig(name);
    const notes = new Set<string>();
    const layers = this.adapterLayers().map(([path, layer]) => ({ path, layer, mergedBefore: layer.mergedAdapters.length }));
    try {
      for (const { path, layer } of layers) {
        for (const note of layer.merge({ adapterNames: options.adapterNames ?? this.active, safe: options.safe, where: path })) notes.add(note);
      }
    } catch (error) {
      for (const { layer, mergedBefore } of layers) layer.unmerge({ keep: mergedBefore });
      throw error;
    }
    return [...notes];
  }

  /** Take every merged adapter out of the base weights again. */
  unmerge(): void {
    this.assertLive('unmerge');
    for (const [, layer] of this.adapterLayers()) layer.unmerge();
  }

  /**
   * Merge the active adapters and return the plain model: every adapter layer is replaced by its base
   * layer (adapters disposed) and every modules_to_save wrapper by the active copy.
   *
   * With `dequantize: true`, every base layer that does not hold a float weight (a 4-bit base, see `holdsNonFloatWeight`) is first
   * replaced by one holding its dense weight, so the merge is exact (`dequant(W) + ΔW`, what the
   * adapter was trained against) and the result is a float model; adapters already merged into such
   * a base are unmerged first. All or nothing: when the merge is refused (`safe` finds a non-finite
   * weight, a HyperLoRA cannot merge), the 4-bit bases are put back and the adapters merged before
   * are merged again, so the model is as it was.
   *
   * Without `dequantize`, a base that cannot hold the merged weight exactly (a 4-bit base re-quantizes
   * it, lossily) says so in a note, as {@link AdapterModel.merge} returns them: `onNote` receives each
   * (PEFT warns); nothing else reports them.
   */
  mergeAndUnload(options: { safe?: boolean; dequantize?: boolean; onNote?: (note: string) => void } = {}): M {
    this.assertLive('mergeAndUnload');
    if (!options.dequantize) {
      const notes = this.merge({ safe: options.safe });
      const model = this.unload();
      // After the unload: a callback that throws leaves the model merged and unloaded, not half done.
      for (const note of notes) options.onNote?.(note);
      return model;
    }
    const mergedBefore = this.adapterLayers().map(([, layer]) => [layer, [...layer.mergedAdapters]] as const);
    this.unmerge();
    // The 4-bit bases are kept until the merge has worked. Float layers stay (a tied output head
    // shares the embedding's variable: a copy would part them).
    const swap = swapLayers(this.model, (_path, module) =>
      module instanceof AdapterLayer || !isBaseLayer(module) || !holdsNonFloatWeight(module) ? null : (module.toLinear?.() ?? Linear.fromBaseLayer(module)),
    );
    try {
      this.merge({ safe: options.safe });
    } catch (error) {
      swap.undo();
      for (const [layer, names] of mergedBefore) if (names.length > 0) layer.merge({ adapterNames: names });
      throw error;
    }
    swap.commit();
    return this.unload();
  }

  /** Remove all adapters without merging and return the plain model. */
  unload(): M {
    this.assertLive('unload');
    for (const [path, layer] of this.adapterLayers()) {
      const base = layer.base_layer;
      // Merged adapters live on in the base weight; their own variables are no longer needed.
      layer.releaseAdapters();
      this.model.setSubmodule(path, base);
    }
    for (const [path, wrapper] of this.modulesToSaveWrappers()) {
      const keep = wrapper.current();
      this.model.setSubmodule(path, keep);
      if (keep !== wrapper.original_module) wrapper.original_module.dispose();
      for (const name of wrapper.adapterNames) if (wrapper.copy(name) !== keep) wrapper.copy(name)!.dispose();
    }
    for (const entry of this.entries.values()) entry.state?.dispose();
    this.entries.clear();
    this.model.adapterInputScope = null;
    this.active = [];
    return this.model;
  }

  /**
   * Combine LoRA adapters into a new one (PEFT's `add_weighted_adapter`); the new adapter is not
   * activated. Sources must be plain LoRA adapters.
   * @throws {ConfigError} on mismatched lists, a weight that is not finite, an unknown `combinationType`, an `svdRank` that is not a positive integer, or unequal ranks for `linear`; {LoraError} for an existing name or an unknown source adapter.
   */
  addWeightedAdapter(options: WeightedAdapterOptions): void {
    this.assertLive('addWeightedAdapter');
    const { adapters, weights, adapterName } = options;
    if (adapters.length === 0 || adapters.length !== weights.length) {
      throw new ConfigError({ field: 'weights', received: weights, expected: `one weight per adapter (${adapters.length})` });
    }
    // Checked here: a NaN weight would make an adapter of NaNs, and an unknown type ran as svd.
    if (!weights.every(Number.isFinite)) throw new ConfigError({ field: 'weights', received: weights, expected: 'finite numbers' });
    if (!(['cat', 'linear', 'svd'] as const).includes(options.combinationType)) {
      throw new ConfigError({ field: 'combinationType', received: options.combinationType, expected: "'cat', 'linear' or 'svd'" });
    }
    if (options.svdRank !== undefined && !(Number.isInteger(options.svdRank) && options.svdRank > 0)) {
      throw new ConfigError({ field: 'svdRank', received: options.svdRank, expected: 'a positive integer (the combined adapter\'s rank)' });
    }
    if (this.entries.has(adapterName)) throw new LoraError(`[@lora/core] An adapter named "${adapterName}" exists already.`);
    const sources = adapters.map((name) => {
      const entry = this.adapterConfig(name);
      if (entry.plugin.name !== 'lora') {
        throw new ConfigError({ field: 'adapters', received: name, expected: 'plain LoRA adapters', hint: `"${name}" is ${entry.plugin.name}.` });
      }
      return { name, config: entry.config as LoraConfig };
    });
    const combination = adapters.length === 1 ? 'linear' : options.combinationType;
    const layers = this.adapterLayers().filter(([, layer]) => adapters.some((name) => layer.adapter(name)));
    const rankOf = (layer: AdapterLayer, name: string): number => (layer.adapter(name) as LoraAdapter | undefined)?.r ?? 0;
    // The new rank, as PEFT: Σr (cat), the common r (linear), svdRank or the largest r (svd).
    const newRank = (() => {
      const ranks = layers.map(([, layer]) => adapters.map((name) => rankOf(layer, name)));
      if (combination === 'cat') return Math.max(...ranks.map((row) => row.reduce((a, b) => a + b, 0)));
      const all = new Set(ranks.flat().filter((r) => r > 0));
      if (combination === 'linear' && all.size > 1) {
        throw new ConfigError({ field: 'combinationType', received: 'linear', expected: "'cat' or 'svd' when ranks differ", hint: 'All adapters must share one rank for linear.' });
      }
      return combination === 'svd' ? (options.svdRank ?? Math.max(...all)) : Math.max(...all);
    })();
    const targetUnion = [...new Set(sources.flatMap(({ name }) => this.adapterInstances(name).map(([path]) => path)))];
    const base = sources[0]!.config;
    this.addAdapter(adapterName, {
      plugin: 'lora',
      config: {
        ...stripDerived(base),
        r: newRank,
        loraAlpha: newRank,
        useRslora: false,
        rankPattern: {},
        alphaPattern: {},
        targetModules: targetUnion,
        layersToTransform: null,
        layersPattern: null,
      },
    });
    for (const [path, layer] of layers) {
      const target = layer.adapter(adapterName) as LoraAdapter | undefined;
      if (!target) throw new LoraError(`[@lora/core] Internal: combined adapter missing at ${path}.`);
      tf.tidy(() => {
        const parts = sources
          .map(({ name }, index) => ({ adapter: layer.adapter(name) as LoraAdapter | undefined, weight: weights[index]! }))
          .filter((part): part is { adapter: LoraAdapter; weight: number } => part.adapter !== undefined);
        let newA: tf.Tensor2D;
        let newB: tf.Tensor2D;
        if (combination === 'cat') {
          newA = tf.concat(parts.map((p) => tf.mul(p.adapter.loraA, p.weight * p.adapter.scaling)), 0) as tf.Tensor2D;
          newB = tf.concat(parts.map((p) => p.adapter.loraB), 1) as tf.Tensor2D;
          const missing = newRank - newA.shape[0];
          if (missing > 0) {
            newA = tf.concat([newA, tf.zeros([missing, layer.inFeatures])], 0) as tf.Tensor2D;
            newB = tf.concat([newB, tf.zeros([layer.outFeatures, missing])], 1) as tf.Tensor2D;
          }
        } else if (combination === 'linear') {
          newA = addMany(parts.map((p) => tf.mul(p.adapter.loraA, Math.sign(p.weight * p.adapter.scaling) * Math.sqrt(Math.abs(p.weight * p.adapter.scaling))))) as tf.Tensor2D;
          newB = addMany(parts.map((p) => tf.mul(p.adapter.loraB, Math.sqrt(Math.abs(p.weight * p.adapter.scaling))))) as tf.Tensor2D;
        } else {
          const delta = addMany(parts.map((p) => tf.mul(p.adapter.deltaWeight(), p.weight)));
          const values = delta.dataSync() as Float32Array;
          const { u, s, vt, k } = thinSvd(values, layer.outFeatures, layer.inFeatures);
          const rank = Math.min(newRank, k);
          const bValues = new Float32Array(layer.outFeatures * newRank);
          const aValues = new Float32Array(newRank * layer.inFeatures);
          for (let i = 0; i < layer.outFeatures; i++) for (let j = 0; j < rank; j++) bValues[i * newRank + j] = u[i * k + j]! * s[j]!;
          for (let j = 0; j < rank; j++) for (let i = 0; i < layer.inFeatures; i++) aValues[j * layer.inFeatures + i] = vt[j * layer.inFeatures + i]!;
          newB = tf.tensor2d(bValues, [layer.outFeatures, newRank]);
          newA = tf.tensor2d(aValues, [newRank, layer.inFeatures]);
        }
        target.loraA.assign(newA);
        target.loraB.assign(newB);
      });
    }
  }

  /** Parameter counts and PEFT's one-line report. Shared variables are counted once. */
  trainableParameters(): TrainableParameterReport {
    let trainable = 0;
    let total = 0;
    for (const [, variable] of [...this.model.namedParameters(), ...this.stateVariables()]) {
      total += variable.size;
      if (variable.trainable) trainable += variable.size;
    }
    for (const [, module] of this.model.namedModules()) total += module.storedParameterCount();
    const percent = total === 0 ? 0 : (100 * trainable) / total;
    const line = `trainable params: ${trainable.toLocaleString('en-US')} || all params: ${total.toLocaleString('en-US')} || trainable%: ${percent.toFixed(4)}`;
    return { trainable, total, percent, line };
  }

  /**
   * Training hooks of the active adapters: their plugins' and their adapter-level objects' (e.g.
   * AdaLoRA's regulariser and rank allocation). `train({ model: adapterModel })` runs them itself.
   */
  trainingHooks(): TrainingHooks[] {
    this.assertLive('trainingHooks');
    const hooks: TrainingHooks[] = [];
    for (const name of this.active) {
      const entry = this.entries.get(name);
      if (!entry) continue;
      if (entry.plugin.trainingHooks) {
        hooks.push(
          entry.plugin.trainingHooks({ adapterName: name, config: entry.config, instances: () => this.adapterInstances(name), state: entry.state }),
        );
      }
      const stateHooks = entry.state?.trainingHooks?.();
      if (stateHooks) hooks.push(stateHooks);
    }
    return hooks;
  }

  /** Free every tensor of the model, its adapters and their adapter-level objects. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const entry of this.entries.values()) entry.state?.dispose();
    this.entries.clear();
    this.model.adapterInputScope = null;
    this.model.dispose();
  }
}

/**
 * PEFT's rule for configs with `fan_in_fan_out`: walking the targets in order, a float Conv1D target
 * ([in, out] weight) sets it true and a float Linear target sets it false (PEFT warns and changes the
 * config, which it then saves). Our layers read the layout from the base layer itself; this keeps
 * the saved config what PEFT writes for the same model.
 */
function withPeftFanInFanOut<T extends AdapterConfigBase>(config: T, targets: readonly Module[]): T {
  if (!Object.hasOwn(config, 'fanInFanOut')) return config;
  let fanInFanOut = (config as T & { fanInFanOut: boolean }).fanInFanOut;
  for (const target of targets) {
    const base = target instanceof AdapterLayer ? target.base_layer : target;
    // Only float layers: PEFT's 4-bit (bitsandbytes) layers leave the config's value as it is.
    if (base instanceof Linear) fanInFanOut = base.fanInFanOut;
  }
  return fanInFanOut === (config as T & { fanInFanOut: boolean }).fanInFanOut ? config : { ...config, fanInFanOut };
}

function stripDerived(config: LoraConfig): Record<string, unknown> {
  const { extraPeftFields: _extra, ...rest } = config;
  return { ...rest, extraPeftFields: {} };
}

export type { BaseLayer };

/**
 * Untyped callers (plain JavaScript) reach here without a registry; say what to pass instead of
 * failing on a property of undefined.
 */
function assertRegistry(options: { registry?: unknown } | undefined, call: string): void {
  const registry = options?.registry as Partial<LoraRegistry> | undefined;
  if (typeof registry?.adapter === 'function' && typeof registry.assertRecipe === 'function') return;
  throw new ConfigError({
    field: 'registry',
    received: registry,
    expected: 'a registry from createLoraRegistry({ plugins: [...] })',
    hint: `Pass it to ${call}, e.g. { registry: createLoraRegistry({ plugins: [lora()] }) }.`,
  });
}
