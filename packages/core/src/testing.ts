import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it, beforeAll } from 'vitest';
import { AdapterModel } from './adapter-model.js';
import { adapterPeftConfig, loadAdapter, saveAdapter } from './adapter-files.js';
import { ConfigError, LoraError } from './errors.js';
import { Linear } from './linear.js';
import { Module } from './module.js';
import type { BaseLayer } from './base-layer.js';
import { PLUGIN_SPECIFICATION_VERSION, type AdapterPlugin, type ApplyContext, type BaseTransform } from './plugin.js';
import { createLoraRegistry } from './registry.js';
import { readJsonFile, readSafetensorsFile, setFaultInjector, type FaultPoint } from './files.js';
import { entryToTensor } from './safetensors.js';
import { initRuntime } from './runtime.js';
import { seededRandom } from './random.js';
import { installNodeFileHost } from './node-file-host.js';

// The test helpers run in Node (vitest) and save adapters to temporary directories.
installNodeFileHost();

// `runUntilKilled` and `SimulatedKill` expose the save step a kill happened at.
export type { FaultPoint } from './files.js';

/** Tolerances for {@link expectTensorsClose}: |a − e| <= atol + rtol·|e| element-wise. */
export interface Tolerance {
  /** Default 1e-6. */
  readonly atol?: number;
  /** Default 1e-5. */
  readonly rtol?: number;
}

/**
 * Assert two arrays hold the same values, value for value (`Object.is`: −0 is not 0, any NaN equals
 * any NaN), for results that must agree exactly (one thread or two, a fused kernel and the kernels
 * it replaces). Fails at the first difference with a one-line message (a diff of large arrays would
 * take the test runner minutes to print).
 */
export function expectSameValues(actual: ArrayLike<number>, expected: ArrayLike<number>, what = 'the result'): void {
  if (actual.length !== expected.length) throw new Error(`${what}: sizes differ: ${actual.length} vs expected ${expected.length}.`);
  for (let i = 0; i < actual.length; i++) {
    if (!Object.is(actual[i], expected[i])) throw new Error(`${what} differs at flat index ${i}: got ${actual[i]}, expected ${expected[i]}.`);
  }
}

/**
 * Assert two tensors (or arrays) have the same shape and values within tolerance; the failure
 * message names the worst element.
 */
export function expectTensorsClose(
  actual: tf.Tensor | ArrayLike<number>,
  expected: tf.Tensor | ArrayLike<number>,
  tolerance: Tolerance = {},
): void {
  const atol = tolerance.atol ?? 1e-6;
  const rtol = tolerance.rtol ?? 1e-5;
  const shapeOf = (value: tf.Tensor | ArrayLike<number>): number[] => (value instanceof tf.Tensor ? value.shape : [value.length]);
  const valuesOf = (value: tf.Tensor | ArrayLike<number>): ArrayLike<number> => (value instanceof tf.Tensor ? value.dataSync() : value);
  const actualShape = shapeOf(actual);
  const expectedShape = shapeOf(expected);
  if (actual instanceof tf.Tensor && expected instanceof tf.Tensor && actualShape.join(',') !== expectedShape.join(',')) {
    throw new Error(`Shapes differ: [${actualShape.join(', ')}] vs expected [${expectedShape.join(', ')}].`);
  }
  const a = valuesOf(actual);
  const e = valuesOf(expected);
  if (a.length !== e.length) throw new Error(`Sizes differ: ${a.length} vs expected ${e.length}.`);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < a.length; i++) {
    const difference = Math.abs(a[i]! - e[i]!);
    const allowed = atol + rtol * Math.abs(e[i]!);
    const excess = Number.isNaN(difference) ? Number.POSITIVE_INFINITY : difference - allowed;
    if (excess > worstExcess) {
      worstExcess = excess;
      worst = i;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `Tensors differ at flat index ${worst}: got ${a[worst]}, expected ${e[worst]} (|diff| ${Math.abs(a[worst]! - e[worst]!)} > atol ${atol} + rtol ${rtol}·|expected|).`,
    );
  }
}

/**
 * Run `fn` and assert it leaves no more tensors alive than before (tfjs tensors are not
 * garbage-collected). Returns `fn`'s result.
 */
export async function withoutTensorLeaks<T>(fn: () => T | Promise<T>): Promise<T> {
  const before = tf.memory().numTensors;
  const result = await fn();
  const after = tf.memory().numTensors;
  if (after !== before) throw new Error(`Tensor leak: ${after - before} tensor(s) more after the call (${before} → ${after}).`);
  return result;
}

/** Thrown at a simulated kill point (see {@link runUntilKilled}). */
export class SimulatedKill extends Error {
  constructor(
    /** The save step this kill was thrown at: the one `killAt` picked, or any step announced after it. */
    readonly point: FaultPoint,
  ) {
    super(`simulated kill before ${point.operation} ${point.path}`);
    this.name = 'SimulatedKill';
  }
}

/** What {@link runUntilKilled} saw. */
export interface KillRun {
  /** Every save step announced, in order, up to and including the kill point. */
  readonly points: readonly FaultPoint[];
  /** Whether the kill happened. */
  readonly killed: boolean;
  /** What `fn` threw (a {@link SimulatedKill} after a kill), or undefined. */
  readonly error: unknown;
}

/**
 * Run `fn` through core's fault-injection seam and simulate the process being killed before the
 * save step `killAt` picks: that step and every later one throw {@link SimulatedKill}, so no
 * clean-up runs, as after a real kill; the files are left as a kill would leave them. With a
 * `killAt` that never picks, it counts the steps of a save.
 *
 * @example
 * const { points } = await runUntilKilled(() => save(), () => false);
 * for (let i = 0; i < points.length; i++) await runUntilKilled(() => save(), (_, index) => index === i);
 */
export async function runUntilKilled(fn: () => Promise<unknown>, killAt: (point: FaultPoint, index: number) => boolean): Promise<KillRun> {
  const points: FaultPoint[] = [];
  let killed = false;
  setFaultInjector((point) => {
    if (killed) throw new SimulatedKill(point);
    points.push(point);
    if (killAt(point, points.length - 1)) {
      killed = true;
      throw new SimulatedKill(point);
    }
  });
  let error: unknown;
  try {
    await fn();
  } catch (caught) {
    error = caught;
  } finally {
    setFaultInjector(null);
  }
  if (error !== undefined && !killed) throw error;
  return { points, killed, error };
}

/**
 * Deterministic pseudo-random numbers in [−scale, scale) (mulberry32), as plain JS numbers for
 * float64 references written in tests.
 */
export function seededRandomValues(count: number, seed: number, scale = 1): number[] {
  const random = seededRandom(seed);
  return Array.from({ length: count }, () => (random() * 2 - 1) * scale);
}

/** Deterministic N(0, scale²) float32 samples (mulberry32 + Box–Muller), independent of tfjs's RNG. */
export function seededNormalValues(count: number, seed: number, scale = 1): Float32Array {
  const uniform = seededRandom(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const u1 = Math.max(uniform(), 1e-12);
    const u2 = uniform();
    const radius = Math.sqrt(-2 * Math.log(u1));
    out[i] = radius * Math.cos(2 * Math.PI * u2) * scale;
    if (i + 1 < count) out[i + 1] = radius * Math.sin(2 * Math.PI * u2) * scale;
  }
  return out;
}

/** Row-major float64 matrix product a [n, k] · b [k, m], for independent references. */
export function matmul64(a: readonly number[], b: readonly number[], n: number, k: number, m: number): number[] {
  const out = new Array<number>(n * m).fill(0);
  for (let i = 0; i < n; i++) {
    for (let p = 0; p < k; p++) {
      const value = a[i * k + p]!;
      for (let j = 0; j < m; j++) out[i * m + j] = out[i * m + j]! + value * b[p * m + j]!;
    }
  }
  return out;
}

/** Float64 transpose of a row-major [rows, cols] matrix. */
export function transpose64(a: readonly number[], rows: number, cols: number): number[] {
  const out = new Array<number>(rows * cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) out[j * rows + i] = a[i * cols + j]!;
  return out;
}

/** max |actual − expected|. @throws when the sizes differ. */
export function maxAbsoluteError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  if (actual.length !== expected.length) throw new Error(`Sizes differ: ${actual.length} vs ${expected.length}.`);
  let worst = 0;
  for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(actual[i]! - expected[i]!));
  return worst;
}

/** max |actual − expected| / max |expected| (the acceptance measure against reference logits). Tensors are read with `dataSync`. */
export function maxRelativeError(actual: ArrayLike<number> | tf.Tensor, expected: ArrayLike<number>): number {
  if (actual instanceof tf.Tensor) return maxRelativeError(actual.dataSync(), expected);
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  return maxAbsoluteError(actual, expected) / (scale || 1);
}

/** Config keys whose list order means nothing (PEFT writes them from Python sets). */
const UNORDERED_CONFIG_LISTS = ['target_modules', 'modules_to_save'];

function normalisedConfig(json: Record<string, unknown>): Record<string, unknown> {
  const copy = { ...json };
  for (const key of UNORDERED_CONFIG_LISTS) if (Array.isArray(copy[key])) copy[key] = [...(copy[key] as string[])].sort();
  return copy;
}

/**
 * Assert that two adapter directories hold the same adapter as PEFT would see it: the same tensor
 * names, shapes, dtypes and bytes in `adapter_model.safetensors`, metadata `{"format": "pt"}`, and
 * equal `adapter_config.json` objects (list order of `target_modules` / `modules_to_save` ignored).
 */
export async function expectSameAdapterFiles(actualDirectory: string, expectedDirectory: string): Promise<void> {
  const expected = await readSafetensorsFile(path.join(expectedDirectory, 'adapter_model.safetensors'));
  const actual = await readSafetensorsFile(path.join(actualDirectory, 'adapter_model.safetensors'));
  expect([...actual.tensors.keys()].sort()).toEqual([...expected.tensors.keys()].sort());
  for (const [name, entry] of expected.tensors) {
    const copy = actual.tensors.get(name)!;
    expect([name, copy.dtype, copy.shape]).toEqual([name, entry.dtype, entry.shape]);
    expect(Buffer.from(copy.data).equals(Buffer.from(entry.data)), `bytes of ${name}`).toBe(true);
  }
  expect(actual.metadata).toEqual({ format: 'pt' });
  const config = async (directory: string) => normalisedConfig((await readJsonFile(path.join(directory, 'adapter_config.json'))) as Record<string, unknown>);
  expect(await config(actualDirectory)).toEqual(await config(expectedDirectory));
}

class Container extends Module {
  add(name: string, module: Module): Module {
    return this.registerModule(name, module);
  }
}

/**
 * A module tree with a `Linear` at every path of a checkpoint's 2-D `.weight` tensors selected by
 * `isLinear`, loaded with the checkpoint's values (and biases): the checkpoint's module paths
 * without its forward pass — enough to load a PEFT adapter and check merged weights without the
 * architecture. The caller disposes the tree.
 */
export async function linearTreeFromCheckpoint(
  file: string,
  options: { readonly isLinear: (path: string) => boolean; readonly fanInFanOut: (path: string) => boolean },
): Promise<Module> {
  const checkpoint = await readSafetensorsFile(file);
  const root = new Container();
  for (const [key, entry] of checkpoint.tensors) {
    if (!key.endsWith('.weight') || entry.shape.length !== 2) continue;
    const modulePath = key.slice(0, -'.weight'.length);
    if (!options.isLinear(modulePath)) continue;
    const fanInFanOut = options.fanInFanOut(modulePath);
    const [rows, cols] = entry.shape as [number, number];
    const bias = checkpoint.tensors.get(`${modulePath}.bias`);
    const linear = new Linear({ inFeatures: fanInFanOut ? rows : cols, outFeatures: fanInFanOut ? cols : rows, bias: bias !== undefined, fanInFanOut });
    tf.tidy(() => {
      linear.weight.assign(entryToTensor(entry));
      if (bias) linear.bias!.assign(entryToTensor(bias));
    });
    const segments = modulePath.split('.');
    let parent: Module = root;
    for (const segment of segments.slice(0, -1)) {
      const existing = parent.namedChildren().find(([name]) => name === segment)?.[1];
      parent = existing ?? (parent as Container).add(segment, new Container());
    }
    (parent as Container).add(segments[segments.length - 1]!, linear);
  }
  return root;
}

class ConformanceBlock extends Module {
  readonly query: Linear;
  readonly conv: Linear;
  readonly head: Linear;

  constructor(seed: number) {
    super();
    this.query = this.registerModule('query', new Linear({ inFeatures: 12, outFeatures: 10, seed }));
    this.conv = this.registerModule('conv', new Linear({ inFeatures: 10, outFeatures: 12, fanInFanOut: true, seed: seed + 10 }));
    this.head = this.registerModule('head', new Linear({ inFeatures: 12, outFeatures: 5, seed: seed + 20 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.head.forward(tf.tanh(this.conv.forward(tf.tanh(this.query.forward(x))))));
  }
}

/**
 * A base layer that keeps its weight outside its parameters, as a 4-bit layer keeps its codes
 * (`holdsNonFloatWeight` is true for it): a copy of `layer`'s dense [out, in] weight in a kept
 * tensor, and of its bias as a frozen parameter. For tests of base transforms, dequantizing merges
 * and saves, which must treat such a layer differently from a float one.
 */
export class NonFloatBaseLayer extends Module implements BaseLayer {
  /** As the copied layer's. */
  readonly inFeatures: number;
  /** As the copied layer's. */
  readonly outFeatures: number;
  /** False: the weight is held [out, in]. */
  readonly fanInFanOut = false;
  /** A copy of the copied layer's bias (a frozen parameter), or null. */
  readonly bias: tf.Variable | null;
  private weight: tf.Tensor2D;
  private readonly linearFanInFanOut: boolean;

  /** @param options.fanInFanOut the layout `toLinear()` gives back (default false; true for GPT-2's Conv1D, as a 4-bit layer restores it). */
  constructor(layer: BaseLayer, options: { readonly fanInFanOut?: boolean } = {}) {
    super();
    this.inFeatures = layer.inFeatures;
    this.outFeatures = layer.outFeatures;
    this.linearFanInFanOut = options.fanInFanOut ?? false;
    this.weight = tf.keep(layer.denseWeight());
    // A copy: given the layer's own variable, the parameter would share it (and die with the layer).
    const bias = layer.bias;
    this.bias = bias === null ? null : tf.tidy(() => this.registerParameter('bias', tf.clone(bias), { trainable: false }));
  }

  /** x·Wᵀ + b over the last axis. */
  forward(input: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const y = this.forwardWithoutBias(input);
      return this.bias === null ? y : tf.add(y, this.bias);
    });
  }

  /** x·Wᵀ over the last axis. */
  forwardWithoutBias(input: tf.Tensor): tf.Tensor {
    return tf.tidy(() => tf.reshape(tf.matMul(tf.reshape(input, [-1, this.inFeatures]), this.weight, false, true), [...input.shape.slice(0, -1), this.outFeatures]));
  }

  /** A copy of the [out, in] weight; the caller disposes it. */
  denseWeight(): tf.Tensor2D {
    return tf.clone(this.weight);
  }

  /** Replace the weight with a copy of `weight` (exactly). */
  assignDenseWeight(weight: tf.Tensor2D): {
    /** Always true: the copy holds the given values exactly. */
    readonly exact: boolean;
  } {
    const previous = this.weight;
    this.weight = tf.keep(tf.clone(weight));
    previous.dispose();
    return { exact: true };
  }

  /** A float `Linear` computing the same, in the layout given to the constructor. */
  toLinear(): Linear {
    return Linear.fromBaseLayer(this, { fanInFanOut: this.linearFanInFanOut });
  }

  /** Free the weight and the bias. */
  override dispose(): void {
    super.dispose();
    this.weight.dispose();
  }
}

/**
 * An {@link ApplyContext} for calling `AdapterInstance.apply` directly in a test: no per-forward
 * inputs and no adapter-level state unless given.
 */
export function applyContextFor(base: BaseLayer, options: Partial<Omit<ApplyContext, 'base'>> = {}): ApplyContext {
  return { base, training: false, modulePath: 'layer', adapterName: 'default', inputs: {}, adapterState: undefined, ...options };
}

/**
 * In the enclosing `describe`: run its tests on `backend` (`initRuntime({ backend })` before them),
 * and set the default runtime up again after them.
 */
export function runSuiteOnBackend(backend: string): void {
  beforeAll(async () => {
    await initRuntime({ backend });
  });
  afterAll(async () => {
    await initRuntime();
  });
}

/**
 * The gradients of Σ forward(x) ⊙ upstream with respect to each of `variables`, then to `x`, in that
 * order: for checking a layer's fused and composed forms against each other. New tensors; the caller
 * disposes them.
 */
export function layerGradients(forward: (input: tf.Tensor) => tf.Tensor, x: tf.Tensor, upstream: tf.Tensor, variables: readonly tf.Variable[]): tf.Tensor[] {
  return tf.tidy(() => {
    const loss = (input: tf.Tensor): tf.Scalar => tf.sum(tf.mul(forward(input), upstream));
    const { grads } = tf.variableGrads(() => loss(x), [...variables]);
    const dx = tf.grad(loss)(x);
    return [...variables.map((variable) => grads[variable.name]!), dx];
  });
}

/** Options for {@link describeAdapterPlugin}. */
export interface AdapterPluginConformanceOptions {
  /** A valid config targeting the test tree's `query` and `conv` layers (both must be targeted). */
  readonly validConfig: Readonly<Record<string, unknown>>;
  /** Configs the plugin must reject with a ConfigError (at least one). */
  readonly invalidConfigs: readonly Readonly<Record<string, unknown>>[];
  /** Extra plugins (e.g. base transforms) to register. */
  readonly extraPlugins?: readonly (AdapterPlugin | BaseTransform)[];
  /** Base transforms applied before the adapter. */
  readonly transforms?: readonly string[];
  /** Tolerance for merged vs unmerged outputs (default atol 1e-5, rtol 1e-4). */
  readonly mergeTolerance?: Tolerance;
  /**
   * The adapter has no single ΔW (a hypernetwork: it depends on per-forward inputs) and refuses to
   * merge. The suite then checks that `merge()` throws a {@link LoraError} naming the adapter and
   * leaves every base weight and the output unchanged, instead of merged ≡ unmerged.
   */
  readonly refusesMerge?: boolean;
  /**
   * The plugin's factory with a seed (e.g. `(seed) => dora({ seed })`): the suite then checks that
   * the same seed gives byte-identical saved adapters and another seed different ones.
   */
  readonly withSeed?: (seed: number) => AdapterPlugin;
}

/**
 * The conformance suite every adapter plugin runs: config validation, output shapes, merged ≡
 * unmerged forward, unmerge restores the base, save → load round trip, disabled adapters give the
 * base output, and no leaked tensors. Call it at the top level of a vitest test file.
 */
export function describeAdapterPlugin(plugin: AdapterPlugin, options: AdapterPluginConformanceOptions): void {
  describe(`adapter plugin conformance: ${plugin.name}`, () => {
    beforeAll(async () => {
      await initRuntime();
    });

    const registry = () => createLoraRegistry({ plugins: [plugin, ...(options.extraPlugins ?? [])] });
    const input = () => tf.randomNormal([3, 4, 12], 0, 1, 'float32', 7);

    function build(): AdapterModel<ConformanceBlock> {
      const model = new ConformanceBlock(3);
      const adapterModel = AdapterModel.create(model, {
        registry: registry(),
        plugin: plugin.name,
        config: options.validConfig,
        transforms: options.transforms,
      });
      // Give every adapter tensor (adapter-level ones too) random values so the adapter is not a no-op.
      let seed = 100;
      const variables = [
        ...adapterModel.adapterInstances('default').flatMap(([, instance]) => instance.namedTensors()),
        ...(adapterModel.adapterState('default')?.namedTensors?.() ?? []),
      ];
      for (const [, variable] of variables) {
        tf.tidy(() => variable.assign(tf.add(variable, tf.randomNormal(variable.shape, 0, 0.3, 'float32', seed++))));
      }
      adapterModel.model.eval();
      return adapterModel;
    }

    it(`declares the ${PLUGIN_SPECIFICATION_VERSION} specification and a package name`, () => {
      expect(plugin.specificationVersion).toBe(PLUGIN_SPECIFICATION_VERSION);
      expect(plugin.kind).toBe('adapter');
      expect(plugin.packageName).toMatch(/^@/u);
    });

    it('rejects invalid configs with a ConfigError naming the field', () => {
      expect(options.invalidConfigs.length).toBeGreaterThan(0);
      for (const config of options.invalidConfigs) {
        let caught: unknown;
        try {
          plugin.parseConfig(config);
        } catch (error) {
          caught = error;
        }
        expect(caught).toBeInstanceOf(ConfigError);
        expect((caught as ConfigError).field.length).toBeGreaterThan(0);
      }
    });

    it('round-trips its config through PEFT JSON', () => {
      const config = plugin.parseConfig(options.validConfig);
      const json = plugin.toPeftJson(config);
      expect(plugin.claimsPeftConfig(json)).toBe(true);
      expect(plugin.toPeftJson(plugin.fromPeftJson(json))).toEqual(json);
    });

    it('wraps the targets and keeps output shapes', async () => {
      await withoutTensorLeaks(() => {
        const adapterModel = build();
        const layers = adapterModel.adapterLayers().map(([path]) => path);
        expect(layers).toEqual(expect.arrayContaining(['query', 'conv']));
        const x = input();
        const y = adapterModel.model.forward(x);
        expect(y.shape).toEqual([3, 4, 5]);
        tf.dispose([x, y]);
        adapterModel.dispose();
      });
    });

    // A plugin either merges exactly or refuses cleanly (one test either way, never a skipped one).
    const refuseMerge = async () => {
      await withoutTensorLeaks(() => {
        const adapterModel = build();
        const x = input();
        const before = adapterModel.adapterLayers().map(([, layer]) => layer.base_layer.denseWeight());
        const unmerged = adapterModel.model.forward(x);
        expect(() => adapterModel.merge()).toThrow(LoraError);
        expect(() => adapterModel.merge()).toThrow(/"default"/u);
        expect(adapterModel.adapterLayers().every(([, layer]) => layer.mergedAdapters.length === 0)).toBe(true);
        const after = adapterModel.adapterLayers().map(([, layer]) => layer.base_layer.denseWeight());
        before.forEach((weight, i) => expectTensorsClose(after[i]!, weight, { atol: 0, rtol: 0 }));
        const again = adapterModel.model.forward(x);
        expectTensorsClose(again, unmerged, { atol: 0, rtol: 0 });
        tf.dispose([x, unmerged, again, ...before, ...after]);
        adapterModel.dispose();
      });
    };
    const mergeExactly = async () => {
      await withoutTensorLeaks(() => {
        const adapterModel = build();
        const x = input();
        const before = adapterModel.adapterLayers().map(([, layer]) => layer.base_layer.denseWeight());
        const unmerged = adapterModel.model.forward(x);
        adapterModel.merge();
        const merged = adapterModel.model.forward(x);
        expectTensorsClose(merged, unmerged, options.mergeTolerance ?? { atol: 1e-5, rtol: 1e-4 });
        adapterModel.unmerge();
        const after = adapterModel.adapterLayers().map(([, layer]) => layer.base_layer.denseWeight());
        before.forEach((weight, i) => expectTensorsClose(after[i]!, weight, { atol: 1e-5, rtol: 1e-5 }));
        const again = adapterModel.model.forward(x);
        expectTensorsClose(again, unmerged, { atol: 1e-5, rtol: 1e-4 });
        tf.dispose([x, unmerged, merged, again, ...before, ...after]);
        adapterModel.dispose();
      });
    };
    it(
      options.refusesMerge
        ? 'refuses to merge with a LoraError and leaves the base weights unchanged'
        : 'gives the same output merged as unmerged, and unmerge restores the base weights',
      options.refusesMerge ? refuseMerge : mergeExactly,
    );

    it('gives the base output when adapters are disabled', async () => {
      await withoutTensorLeaks(() => {
        const adapterModel = build();
        const x = input();
        const plain = new ConformanceBlock(3);
        plain.eval();
        const disabled = adapterModel.disableAdapters(() => adapterModel.model.forward(x));
        const reference = plain.forward(x);
        if (!options.transforms?.length) expectTensorsClose(disabled, reference, { atol: 1e-6, rtol: 1e-6 });
        const enabled = adapterModel.model.forward(x);
        const difference = tf.tidy(() => tf.max(tf.abs(tf.sub(enabled, disabled))).dataSync()[0]!);
        expect(difference).toBeGreaterThan(1e-4);
        tf.dispose([x, disabled, reference, enabled]);
        plain.dispose();
        adapterModel.dispose();
      });
    });

    it('refuses each base transform it declares a refusal for, with the reason', () => {
      for (const [name, reason] of Object.entries(plugin.compatibility?.refusals ?? {})) {
        const transform: BaseTransform = {
          specificationVersion: PLUGIN_SPECIFICATION_VERSION,
          kind: 'base-transform',
          name,
          packageName: '@lora-internal/conformance',
          shouldTransform: () => false,
          transform: (module) => module,
        };
        const check = createLoraRegistry({ plugins: [plugin, transform] }).checkRecipe({ adapter: plugin.name, transforms: [name] });
        expect(check.ok).toBe(false);
        expect(check.problems.join(' ')).toContain(reason);
      }
    });

    it("writes PEFT's fan_in_fan_out for the targets' layout (Conv1D last → true)", async () => {
      await withoutTensorLeaks(() => {
        const adapterModel = build();
        const json = adapterPeftConfig(adapterModel, 'default');
        // ConformanceBlock's targets are `query` (Linear) then `conv` (Conv1D): PEFT ends with true. On a
        // 4-bit base PEFT's bitsandbytes layers leave the config's value (false) as it is.
        if ('fan_in_fan_out' in json) expect(json['fan_in_fan_out']).toBe(!options.transforms?.length);
        adapterModel.dispose();
      });
    });

    if (options.withSeed) {
      const withSeed = options.withSeed;
      it('gives byte-identical saved adapters for the same seed, different ones for another', async () => {
        const root = await mkdtemp(path.join(tmpdir(), `lora-determinism-${plugin.name}-`));
        try {
          const saveWith = async (seed: number, directory: string): Promise<Uint8Array> => {
            const adapterModel = AdapterModel.create(new ConformanceBlock(3), {
              registry: createLoraRegistry({ plugins: [withSeed(seed), ...(options.extraPlugins ?? [])] }),
              plugin: plugin.name,
              config: options.validConfig,
              transforms: options.transforms,
            });
            try {
              await saveAdapter(adapterModel, directory);
            } finally {
              adapterModel.dispose();
            }
            return new Uint8Array(await readFile(path.join(directory, 'adapter_model.safetensors')));
          };
          await withoutTensorLeaks(async () => {
            const first = await saveWith(11, path.join(root, 'a'));
            const again = await saveWith(11, path.join(root, 'b'));
            const other = await saveWith(12, path.join(root, 'c'));
            expect(Buffer.from(again).equals(Buffer.from(first))).toBe(true);
            expect(Buffer.from(other).equals(Buffer.from(first))).toBe(false);
          });
        } finally {
          await rm(root, { recursive: true, force: true });
        }
      });
    }

    it('saves and loads to identical outputs', async () => {
      const directory = await mkdtemp(path.join(tmpdir(), `lora-conformance-${plugin.name}-`));
      try {
        await withoutTensorLeaks(async () => {
          const adapterModel = build();
          const x = input();
          const expected = adapterModel.model.forward(x);
          await saveAdapter(adapterModel, directory);
          const fresh = new AdapterModel(new ConformanceBlock(3), { registry: registry() });
          for (const name of options.transforms ?? []) fresh.applyBaseTransform(fresh.registry.transform(name));
          await loadAdapter(fresh, directory);
          fresh.model.eval();
          const actual = fresh.model.forward(x);
          expectTensorsClose(actual, expected, { atol: 1e-6, rtol: 1e-6 });
          tf.dispose([x, expected, actual]);
          adapterModel.dispose();
          fresh.dispose();
        });
      } finally {
        await rm(directory, { recursive: true, force: true });
      }
    });
  });
}
