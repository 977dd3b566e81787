import * as tf from '@tensorflow/tfjs-core';
import { LoraError, ModuleError } from './errors.js';
import type { AdapterInputs } from './plugin.js';

/** Runs a forward pass with per-forward adapter inputs; installed on a model by the `AdapterModel` wrapping it. */
export type AdapterInputScope = <T>(inputs: AdapterInputs, fn: () => T) => T;

/**
 * A node of the model tree, in the manner of `torch.nn.Module`: named child modules and
 * named parameters, so Hugging Face checkpoints and PEFT adapters map onto it by name.
 *
 * Parameters are `tf.Variable`s owned by the module and freed by {@link Module.dispose}.
 * Freezing is a flag on the variable (`variable.trainable`), never a copy.
 *
 * A subclass that keeps a child in a field must give the field the child's registered
 * name (`this.c_attn = this.registerModule('c_attn', …)`): {@link Module.setSubmodule}
 * then updates the field too, the way PyTorch's `setattr` does.
 */
export abstract class Module {
  /** True in training mode (dropout active), false after {@link Module.eval}. */
  training = true;
  /** Set by the `AdapterModel` wrapping this model, so models' `forward(…, { adapterInputs })` reach its adapters. */
  adapterInputScope: AdapterInputScope | null = null;
  private readonly childModules = new Map<string, Module>();
  private readonly ownParameterMap = new Map<string, tf.Variable>();
  private disposedFlag = false;

  /** True once {@link Module.dispose} has run on this module (or on a model holding it): its weights are freed and forward passes are refused. */
  get isDisposed(): boolean {
    return this.disposedFlag;
  }

  /**
   * Refuse to compute with freed weights. Layers call it first in `forward`, so a forward pass of a
   * disposed model is one clear error rather than the backend's failure on a freed buffer.
   * @param what the layer as the message names it, with its package, e.g. `[@lora/core] Linear`.
   * @throws {LoraError} after {@link Module.dispose}.
   */
  protected throwIfDisposed(what: string): void {
    if (this.disposedFlag) {
      throw new LoraError(
        `${what}: this layer was disposed (with its model or AdapterModel), its weights freed. Load or create the model again, and call dispose() only when done with it.`,
      );
    }
  }

  /** Register a child module under `name` and return it. */
  protected registerModule<T extends Module>(name: string, module: T): T {
    if (name.length === 0 || name.includes('.')) {
      throw new ModuleError(`[@lora/core] Module names must be non-empty and contain no ".", got "${name}".`, name);
    }
    this.childModules.set(name, module);
    return module;
  }

  /**
   * Register a parameter. `value` becomes a `tf.Variable` owned by this module; the
   * caller keeps ownership of `value` itself and may dispose it afterwards.
   */
  protected registerParameter(name: string, value: tf.Tensor | tf.Variable, options: { trainable?: boolean } = {}): tf.Variable {
    const variable = value instanceof tf.Variable ? value : tf.variable(value, options.trainable ?? true);
    if (options.trainable !== undefined) variable.trainable = options.trainable;
    const previous = this.ownParameterMap.get(name);
    if (previous && previous !== variable) previous.dispose();
    this.ownParameterMap.set(name, variable);
    return variable;
  }

  /** The parameters held directly by this module (not its children), in registration order. */
  protected ownParameters(): Iterable<[string, tf.Variable]> {
    return this.ownParameterMap.entries();
  }

  /** Look up a parameter held directly by this module. */
  getOwnParameter(name: string): tf.Variable | undefined {
    return this.ownParameterMap.get(name);
  }

  /**
   * Run `fn` (a forward pass of this model) with per-forward adapter inputs, e.g. a condition per
   * batch row. Models call it from `forward(…, { adapterInputs })`; without inputs it just runs `fn`.
   * @throws {LoraError} when inputs are given but no `AdapterModel` wraps this model.
   */
  withAdapterInputs<T>(inputs: AdapterInputs | undefined, fn: () => T): T {
    if (inputs === undefined) return fn();
    if (!this.adapterInputScope) {
      throw new LoraError(
        `[@lora/core] adapterInputs (${Object.keys(inputs).join(', ') || 'empty'}) were given to a model no AdapterModel wraps. Create one with AdapterModel.create(model, …) or loadAdapterModel(…) first.`,
      );
    }
    return this.adapterInputScope(inputs, fn);
  }

  /** Direct children, in registration order. */
  namedChildren(): [string, Module][] {
    return [...this.childModules.entries()];
  }

  /** This module (path `prefix`, '' at the root) and every descendant, depth first in registration order. */
  namedModules(prefix = ''): [string, Module][] {
    const result: [string, Module][] = [[prefix, this]];
    for (const [name, child] of this.childModules) {
      result.push(...child.namedModules(prefix ? `${prefix}.${name}` : name));
    }
    return result;
  }

  /**
   * Every parameter with its dotted path, like PyTorch's `named_parameters()`. A variable shared by
   * two modules (tied embeddings) is listed once, under its first path.
   */
  namedParameters(prefix = ''): [string, tf.Variable][] {
    const seen = new Set<tf.Variable>();
    const result: [string, tf.Variable][] = [];
    for (const [path, module] of this.namedModules(prefix)) {
      for (const [name, variable] of module.ownParameters()) {
        if (seen.has(variable)) continue;
        seen.add(variable);
        result.push([path ? `${path}.${name}` : name, variable]);
      }
    }
    return result;
  }

  /** The variables whose `trainable` flag is set. */
  trainableVariables(): tf.Variable[] {
    return this.namedParameters()
      .filter(([, variable]) => variable.trainable)
      .map(([, variable]) => variable);
  }

  /** Set `trainable` on every parameter of this subtree (false freezes it). */
  setTrainable(trainable: boolean): this {
    for (const [, variable] of this.namedParameters()) variable.trainable = trainable;
    return this;
  }

  /**
   * The module at a dotted path ('' is this module).
   * @throws {ModuleError} naming the first path segment that does not exist.
   */
  getSubmodule(path: string): Module {
    if (path === '') return this;
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- walking down from the root
    let current: Module = this;
    const walked: string[] = [];
    for (const segment of path.split('.')) {
      const next = current.childModules.get(segment);
      walked.push(segment);
      if (!next) {
        throw new ModuleError(
          `[@lora/core] No module at "${path}": "${walked.join('.')}" does not exist. Children there: ${[...current.childModules.keys()].join(', ') || '(none)'}.`,
          path,
        );
      }
      current = next;
    }
    return current;
  }

  /**
   * Replace the module at a dotted path and return the one it replaced (which is not disposed).
   * A field on the parent holding the old child is pointed at the new one.
   */
  setSubmodule(path: string, module: Module): Module {
    const cut = path.lastIndexOf('.');
    const parent = cut < 0 ? this : this.getSubmodule(path.slice(0, cut));
    const name = cut < 0 ? path : path.slice(cut + 1);
    const previous = parent.childModules.get(name);
    if (!previous) {
      throw new ModuleError(`[@lora/core] Cannot replace "${path}": no such module.`, path);
    }
    parent.childModules.set(name, module);
    const fields = parent as unknown as Record<string, unknown>;
    if (Object.prototype.hasOwnProperty.call(parent, name) && fields[name] === previous) fields[name] = module;
    module.training = previous.training;
    return previous;
  }

  /** Training mode for this module and all descendants (dropout active). */
  train(mode = true): this {
    for (const [, module] of this.namedModules()) module.training = mode;
    return this;
  }

  /** Evaluation mode (dropout off). */
  eval(): this {
    return this.train(false);
  }

  /**
   * Parameters this module holds outside `tf.Variable`s (e.g. packed 4-bit weights); 0 by default.
   * Counted as frozen parameters by {@link Module.parameterCount} and PEFT's report.
   */
  storedParameterCount(): number {
    return 0;
  }

  /** Number of scalar parameters (shared variables counted once; stored non-variable parameters included unless `trainableOnly`). */
  parameterCount(options: { trainableOnly?: boolean } = {}): number {
    let total = 0;
    for (const [, variable] of this.namedParameters()) {
      if (options.trainableOnly && !variable.trainable) continue;
      total += variable.size;
    }
    if (!options.trainableOnly) for (const [, module] of this.namedModules()) total += module.storedParameterCount();
    return total;
  }

  /**
   * A deep copy of this subtree: the same class, children cloned, every variable copied into a new
   * one with the same value and `trainable` flag (variables shared inside the subtree stay shared in
   * the copy). Fields that pointed at a child or a variable point at its copy. Used by
   * `modules_to_save`, which trains a copy of any module (norms, embeddings, heads). Subclasses
   * holding tensors outside variables override it.
   */
  clone(): Module {
    return this.cloneWith(new Map());
  }

  private cloneWith(copies: Map<unknown, unknown>): Module {
    const copy = Object.create(Object.getPrototypeOf(this) as object) as Module;
    Object.assign(copy, this);
    const writable = copy as unknown as { childModules: Map<string, Module>; ownParameterMap: Map<string, tf.Variable> };
    writable.childModules = new Map();
    writable.ownParameterMap = new Map();
    copies.set(this, copy);
    for (const [name, child] of this.childModules) {
      const childCopy = (copies.get(child) as Module | undefined) ?? child.cloneWith(copies);
      writable.childModules.set(name, childCopy);
    }
    for (const [name, variable] of this.ownParameterMap) {
      let variableCopy = copies.get(variable) as tf.Variable | undefined;
      if (!variableCopy) {
        variableCopy = tf.variable(variable, variable.trainable);
        copies.set(variable, variableCopy);
      }
      writable.ownParameterMap.set(name, variableCopy);
    }
    const fields = copy as unknown as Record<string, unknown>;
    for (const key of Object.keys(fields)) {
      const value = fields[key];
      if (copies.has(value)) fields[key] = copies.get(value);
    }
    return copy;
  }

  /**
   * Free every variable of this subtree, calling each child's `dispose()` (so subclasses holding
   * other resources free them too). The module must not be used afterwards.
   */
  dispose(): void {
    this.disposedFlag = true;
    for (const child of this.childModules.values()) child.dispose();
    for (const [, variable] of this.ownParameters()) {
      if (!variable.isDisposed) variable.dispose();
    }
  }
}

/** A module computing one tensor from one tensor (Linear, norms, dropout, adapter layers). */
export interface TensorModule {
  /** The output for `input`. The caller disposes it unless it is `input` itself (a `Dropout` in eval mode returns its input). */
  forward(input: tf.Tensor): tf.Tensor;
}

/** An ordered list of child modules named "0", "1", … like `torch.nn.ModuleList`. */
export class ModuleList<T extends Module = Module> extends Module {
  private count = 0;

  constructor(modules: readonly T[] = []) {
    super();
    for (const module of modules) this.append(module);
  }

  /** Register `module` as the next child, named by its index ("0", "1", …); returns the list for chaining. */
  append(module: T): this {
    this.registerModule(String(this.count), module);
    this.count += 1;
    return this;
  }

  /** Number of children appended. */
  get length(): number {
    return this.count;
  }

  /** The module at index `index`; reflects replacements made by `setSubmodule`. */
  get(index: number): T {
    return this.getSubmodule(String(index)) as T;
  }

  /** The children in index order (`for (const block of model.h)`). */
  *[Symbol.iterator](): IterableIterator<T> {
    for (let index = 0; index < this.count; index++) yield this.get(index);
  }
}
