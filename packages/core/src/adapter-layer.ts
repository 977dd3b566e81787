import * as tf from '@tensorflow/tfjs-core';
import type { BaseLayer } from './base-layer.js';
import { LoraError, NonFiniteTensorError } from './errors.js';
import { countNonFinite } from './finite.js';
import { Module } from './module.js';
import type { AdapterInputs, AdapterInstance, AdapterState, ApplyContext } from './plugin.js';
import { tensorToEntry } from './safetensors.js';
import { allFinite } from './tensor-reductions.js';

/** What an adapter layer asks of the `AdapterModel` that owns it while computing. */
export interface AdapterLayerHost {
  /** The per-forward adapter inputs of the pass in progress (`{}` outside one). */
  adapterInputs(): AdapterInputs;
  /** The adapter-level object of an adapter, if its plugin has one. */
  adapterState(name: string): AdapterState | undefined;
}

const NO_INPUTS: AdapterInputs = Object.freeze({});

/** The in-memory parameter name of a saved key: `lora_A.weight` → `lora_A.<adapter>.weight`, `lora_E` → `lora_E.<adapter>`. */
export function inMemoryTensorName(savedKey: string, adapterName: string): string {
  const match = /^(.*)\.(weight|bias)$/u.exec(savedKey);
  return match ? `${match[1]}.${adapterName}.${match[2]}` : `${savedKey}.${adapterName}`;
}

/**
 * Wraps a base layer (child `base_layer`, as PEFT names it) and holds any number of named
 * adapters on it. `forward(x) = base(x)` then, for each active adapter in order, the adapter's
 * contribution; merged adapters live in the base weight instead.
 */
export class AdapterLayer extends Module {
  /** The wrapped layer (a `Linear`, or a base transform's layer such as 4-bit `QuantLinear`), registered as child `base_layer`. */
  readonly base_layer: Module & BaseLayer;
  private readonly adapterMap = new Map<string, AdapterInstance>();
  private active: string[] = [];
  private mergedNames: string[] = [];
  /** Base snapshots taken before each merge, for bases that restore exactly (see {@link BaseLayer.snapshotForMerge}). */
  private snapshots: unknown[] = [];
  /** When true the layer computes the base alone (unmerging first if needed). */
  disabled = false;
  /** The wrapped module's path in the model (given to adapters in {@link ApplyContext}). */
  modulePath: string;
  /** The owning adapter model, which supplies per-forward inputs and adapter-level state. */
  host: AdapterLayerHost | null;

  constructor(base: Module & BaseLayer, options: { modulePath?: string; host?: AdapterLayerHost } = {}) {
    super();
    this.base_layer = this.registerModule('base_layer', base);
    this.training = base.training;
    this.modulePath = options.modulePath ?? '';
    this.host = options.host ?? null;
  }

  /** The wrapped base layer's input width. */
  get inFeatures(): number {
    return this.base_layer.inFeatures;
  }

  /** The wrapped base layer's output width. */
  get outFeatures(): number {
    return this.base_layer.outFeatures;
  }

  protected override ownParameters(): Iterable<[string, tf.Variable]> {
    const result: [string, tf.Variable][] = [];
    for (const [adapterName, instance] of this.adapterMap) {
      for (const [key, variable] of instance.namedTensors()) result.push([inMemoryTensorName(key, adapterName), variable]);
    }
    return result;
  }

  /** Adapter names held by this layer, in insertion order. */
  get adapterNames(): string[] {
    return [...this.adapterMap.keys()];
  }

  /** Names of the adapters merged into the base weight, in merge order. */
  get mergedAdapters(): readonly string[] {
    return this.mergedNames;
  }

  /** Whether any adapter is merged into the base weight (forward then runs the base layer alone). */
  get merged(): boolean {
    return this.mergedNames.length > 0;
  }

  /** The adapters `forward` applies, in order (see `setActiveAdapters`). */
  get activeAdapters(): readonly string[] {
    return this.active;
  }

  /** The adapter instance named `name`, or undefined when this layer has none by that name. */
  adapter(name: string): AdapterInstance | undefined {
    return this.adapterMap.get(name);
  }

  /**
   * Attach an adapter instance under `name` (inactive until named in `setActiveAdapters`); the layer owns and disposes it.
   * @throws {LoraError} when the layer already has an adapter named `name`.
   */
  addAdapter(name: string, instance: AdapterInstance): void {
    if (this.adapterMap.has(name)) throw new LoraError(`[@lora/core] This layer already has an adapter named "${name}".`);
    this.adapterMap.set(name, instance);
  }

  /** Select the adapters applied in `forward` (names this layer lacks are ignored). */
  setActiveAdapters(names: readonly string[]): void {
    this.active = names.filter((name) => this.adapterMap.has(name));
  }

  /** Remove and dispose an adapter. @throws {LoraError} if it is merged. */
  deleteAdapter(name: string): void {
    const instance = this.adapterMap.get(name);
    if (!instance) return;
    if (this.mergedNames.includes(name)) {
      throw new LoraError(`[@lora/core] Cannot delete adapter "${name}" while it is merged. Call unmerge() first.`);
    }
    instance.dispose();
    this.adapterMap.delete(name);
    this.active = this.active.filter((n) => n !== name);
  }

  /**
   * Dispose every adapter without unmerging (merged ones stay folded into the base weight).
   * Used when unloading; the layer holds no adapters afterwards.
   */
  releaseAdapters(): void {
    for (const instance of this.adapterMap.values()) instance.dispose();
    this.adapterMap.clear();
    this.active = [];
    this.mergedNames = [];
    this.snapshots = [];
  }

  /** The base output plus each active adapter's contribution; the base output alone when disabled (unmerging first), merged, or no adapter is active. The caller disposes the result. */
  forward(input: tf.Tensor): tf.Tensor {
    this.throwIfDisposed(`[@lora/core] ${this.modulePath || 'AdapterLayer'}`);
    if (this.disabled) {
      if (this.merged) this.unmerge();
      return this.base_layer.forward(input);
    }
    if (this.merged || this.active.length === 0) return this.base_layer.forward(input);
    const inputs = this.host?.adapterInputs() ?? NO_INPUTS;
    const context = (name: string): ApplyContext => ({
      base: this.base_layer,
      training: this.training,
      modulePath: this.modulePath,
      adapterName: name,
      inputs,
      adapterState: this.host?.adapterState(name),
    });
    return tf.tidy(() => {
      if (this.active.length === 1) {
        const [name] = this.active as [string];
        const whole = this.adapterMap.get(name)!.applyWithBase?.(input, context(name)) ?? null;
        if (whole !== null) return whole;
      }
      let result = this.base_layer.forward(input);
      for (const name of this.active) result = this.adapterMap.get(name)!.apply(input, result, context(name));
      return result;
    });
  }

  /**
   * Fold adapters into the base weight (default: the active ones). Already merged names are skipped.
   * With `safe`, the merged weight is checked for NaN/Inf before the base is touched
   * ({@link NonFiniteTensorError} naming `where`, the layer's path, when given).
   * All or nothing: when one adapter cannot be merged (it throws), those this call merged are taken
   * out again before the error is rethrown.
   * @returns notes from the base when it cannot hold the merged weight exactly (a quantized base).
   */
  merge(options: { adapterNames?: readonly string[]; safe?: boolean; where?: string } = {}): string[] {
    const mergedBefore = this.mergedNames.length;
    try {
      return this.mergeEach(options.adapterNames ?? this.active, options.safe ?? false, options.where);
    } catch (error) {
      this.unmerge({ keep: mergedBefore });
      throw error;
    }
  }

  private mergeEach(names: readonly string[], safe: boolean, where: string | undefined): string[] {
    const notes: string[] = [];
    for (const name of names) {
      const instance = this.adapterMap.get(name);
      if (!instance || this.mergedNames.includes(name)) continue;
      const merged = tf.tidy(() => {
        const weight = this.base_layer.denseWeight();
        // Core's default merge is additive; only non-additive adapters (DoRA) provide their own.
        return instance.mergeWeight ? instance.mergeWeight(weight, this.base_layer) : tf.add<tf.Tensor2D>(weight, instance.deltaWeight(this.base_layer));
      });
      let snapshot: unknown;
      try {
        if (safe) {
          // On the device first; the host reads the values only to describe a weight that is not finite.
          const finite = allFinite([merged]);
          const { count, first } = finite ? { count: 0, first: null } : countNonFinite(tensorToEntry(merged));
          if (count > 0) throw new NonFiniteTensorError({ tensor: `${where ? `${where}.` : ''}weight`, count, found: first!, merging: name });
        }
        snapshot = this.base_layer.snapshotForMerge?.();
        const result = this.base_layer.assignDenseWeight(merged);
        if (!result.exact && result.note) notes.push(result.note);
      } finally {
        merged.dispose();
      }
      this.mergedNames.push(name);
      this.snapshots.push(snapshot);
    }
    return notes;
  }

  /**
   * Take merged adapters out of the base weight again, last merged first.
   * @param options.keep how many of the earliest merged adapters to leave merged (default 0: all out).
   */
  unmerge(options: { keep?: number } = {}): void {
    const keep = options.keep ?? 0;
    while (this.mergedNames.length > keep) {
      const name = this.mergedNames.pop()!;
      const snapshot = this.snapshots.pop();
      const instance = this.adapterMap.get(name)!;
      // Always let the adapter undo its merge (it may hold state for it, like DoRA's cached norm).
      const restored = tf.tidy(() => {
        const weight = this.base_layer.denseWeight();
        return instance.unmergeWeight ? instance.unmergeWeight(weight, this.base_layer) : tf.sub<tf.Tensor2D>(weight, instance.deltaWeight(this.base_layer));
      });
      try {
        // A base that can restore its exact pre-merge state (the original 4-bit bytes) does so.
        if (snapshot !== undefined && this.base_layer.restoreSnapshot) this.base_layer.restoreSnapshot(snapshot);
        else this.base_layer.assignDenseWeight(restored);
      } finally {
        restored.dispose();
      }
    }
  }

  override dispose(): void {
    for (const instance of this.adapterMap.values()) instance.dispose();
    this.adapterMap.clear();
    super.dispose();
  }
}

class ModuleDict extends Module {
  set(name: string, module: Module): void {
    this.registerModule(name, module);
  }
}

/**
 * PEFT's `ModulesToSaveWrapper`: keeps the original module (child `original_module`) and one
 * trainable copy per adapter (`modules_to_save.<adapter>`); forward runs the active adapter's copy.
 */
export class ModulesToSaveWrapper extends Module {
  /** The module as the base model had it (child `original_module`); runs when no adapter copy is active. */
  readonly original_module: Module;
  /** A `ModuleDict` of the per-adapter copies by adapter name (child `modules_to_save`); rebuilt when one is deleted. */
  readonly modules_to_save: Module;
  private readonly copies = new Map<string, Module>();
  /** The adapter whose copy forward runs: the first active adapter that has one (set by `setAdapter`), or null for the original. */
  activeAdapter: string | null = null;
  /** When true forward runs `original_module` whatever the active adapter (set while adapters are disabled). */
  disabled = false;

  constructor(original: Module) {
    super();
    this.original_module = this.registerModule('original_module', original);
    this.modules_to_save = this.registerModule('modules_to_save', new ModuleDict());
    this.training = original.training;
  }

  /** Add a trainable copy of the original module for adapter `name` (PEFT's `modules_to_save.<name>`) and return it. */
  addAdapter(name: string): Module {
    const copy = this.original_module.clone();
    (this.modules_to_save as ModuleDict).set(name, copy);
    this.copies.set(name, copy);
    return copy;
  }

  /** Adapter `name`'s copy, or undefined when it has none. */
  copy(name: string): Module | undefined {
    return this.copies.get(name);
  }

  /** Names of the adapters that have a copy, in insertion order. */
  get adapterNames(): string[] {
    return [...this.copies.keys()];
  }

  /** Dispose adapter `name`'s copy and stop listing it; unknown names are ignored. */
  deleteAdapter(name: string): void {
    const copy = this.copies.get(name);
    if (!copy) return;
    copy.dispose();
    this.copies.delete(name);
    // Rebuild the dict so the removed copy is no longer listed.
    const dict = new ModuleDict();
    for (const [other, module] of this.copies) dict.set(other, module);
    this.setSubmodule('modules_to_save', dict);
    if (this.activeAdapter === name) this.activeAdapter = null;
  }

  /** The module forward runs: the active adapter's copy, or the original when disabled. */
  current(): Module {
    if (this.disabled || this.activeAdapter === null) return this.original_module;
    return this.copies.get(this.activeAdapter) ?? this.original_module;
  }

  /** Forward through `current()`: the active adapter's copy, or the original module. */
  forward(input: tf.Tensor): tf.Tensor {
    return (this.current() as Module & { forward(x: tf.Tensor): tf.Tensor }).forward(input);
  }

  override dispose(): void {
    super.dispose();
    this.copies.clear();
  }
}
