import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it, beforeAll } from 'vitest';
import { AdapterModel } from './adapter-model.js';
import { loadAdapter, saveAdapter } from './adapter-files.js';
import { ConfigError } from './errors.js';
import { Linear } from './linear.js';
import { Module } from './module.js';
import type { AdapterPlugin, BaseTransform } from './plugin.js';
import { createLoraRegistry } from './registry.js';
import { initRuntime } from './runtime.js';

/** Tolerances for {@link expectTensorsClose}: |a − e| <= atol + rtol·|e| element-wise. */
export interface Tolerance {
  /** Default 1e-6. */
  readonly atol?: number;
  /** Default 1e-5. */
  readonly rtol?: number;
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
      // Give every adapter tensor random values so the adapter is not a no-op.
      let seed = 100;
      for (const [, instance] of adapterModel.adapterInstances('default')) {
        for (const [, variable] of instance.namedTensors()) {
          tf.tidy(() => variable.assign(tf.add(variable, tf.randomNormal(variable.shape, 0, 0.3, 'float32', seed++))));
        }
      }
      adapterModel.model.eval();
      return adapterModel;
    }

    it('declares the v1 specification and a package name', () => {
      expect(plugin.specificationVersion).toBe('v1');
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

    it('gives the same output merged as unmerged, and unmerge restores the base weights', async () => {
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
    });

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
