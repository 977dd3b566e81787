import * as tf from '@tensorflow/tfjs-core';
import { beforeAll, describe, expect, it } from 'vitest';
import type {
  AdapterLayer,
  LoraAdapter} from '../src/index.js';
import {
  AdapterModel,
  ConfigError,
  createLoraRegistry,
  initRuntime,
  Linear,
  loadAdapterModel,
  lora,
  LoraError,
  NonFiniteTensorError,
  ModulesToSaveWrapper,
  PLUGIN_SPECIFICATION_VERSION,
  serializeAdapter,
  type BaseTransform,
} from '../src/index.js';
import { expectTensorsClose, NonFloatBaseLayer, withoutTensorLeaks } from '../src/testing.js';
import { Gpt2ShapedTree } from './helpers.js';

const registry = createLoraRegistry({ plugins: [lora({ seed: 1 })] });

function randomiseB(adapterModel: AdapterModel, name: string, seed: number): void {
  for (const [, instance] of adapterModel.adapterInstances(name)) {
    const adapter = instance as LoraAdapter;
    tf.tidy(() => adapter.loraB.assign(tf.randomNormal(adapter.loraB.shape, 0, 0.5, 'float32', seed++)));
  }
}

function create(config: Record<string, unknown>, name = 'default'): AdapterModel<Gpt2ShapedTree> {
  const adapterModel = AdapterModel.create(new Gpt2ShapedTree({ width: 16 }), { registry, config, adapterName: name });
  adapterModel.model.eval();
  return adapterModel;
}

const input = () => tf.randomNormal([2, 3, 16], 0, 1, 'float32', 5);

describe('AdapterModel', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('refuses a second AdapterModel over a wrapped model and leaves the first one whole', async () => {
    const first = create({ r: 2, targetModules: ['c_attn', 'c_proj'] });
    const before = serializeAdapter(first).get('adapter_model.safetensors')!;
    expect(() => new AdapterModel(first.model, { registry })).toThrow(LoraError);
    expect(() => AdapterModel.create(first.model, { registry, config: { r: 2, targetModules: ['c_attn'] } })).toThrow(
      /^\[@lora\/core\] This model is already wrapped by an AdapterModel \(adapter layers at transformer\.h\.0\.attn\.c_attn, transformer\.h\.0\.attn\.c_proj, …\); add adapters to that AdapterModel \(addAdapter, loadAdapter\) or unload\(\) it first\.$/u,
    );
    await expect(loadAdapterModel(first.model, { files: serializeAdapter(first) }, { registry })).rejects.toThrow(LoraError);
    expect(first.trainableParameters().trainable).toBeGreaterThan(0);
    expect(serializeAdapter(first).get('adapter_model.safetensors')).toEqual(before);
    // Once unloaded, the model can be wrapped again.
    const plain = first.unload();
    const again = AdapterModel.create(plain, { registry, config: { r: 2, targetModules: ['c_attn'] } });
    expect(again.adapterLayers().length).toBe(2);
    again.dispose();
  });

  it('leaves the model as it was (trainable flags, no base transform) when create or loadAdapterModel refuses the adapter', async () => {
    let transformed = 0;
    // A base transform that records each replacement: none may run before the config is accepted.
    const recordingTransform: BaseTransform = {
      specificationVersion: PLUGIN_SPECIFICATION_VERSION,
      kind: 'base-transform',
      name: 'recording',
      packageName: '@lora-internal/recording',
      shouldTransform: () => true,
      transform: (module) => {
        transformed += 1;
        return module;
      },
    };
    const withTransform = createLoraRegistry({ plugins: [lora({ seed: 1 }), recordingTransform] });
    const model = new Gpt2ShapedTree({ width: 16 });
    const flags = () => model.namedParameters().map(([, variable]) => variable.trainable);
    expect(flags().every(Boolean)).toBe(true);
    for (const config of [
      { r: 2, loraAlhpa: 16, targetModules: ['c_attn'] },
      { r: -1, targetModules: ['c_attn'] },
      { r: 2, targetModules: ['q_proj'] },
      // Matched only once the adapter is attached, which is after the transforms: checked before them now.
      { r: 2, targetModules: ['c_attn'], modulesToSave: ['nope'] },
    ]) {
      expect(() => AdapterModel.create(model, { registry: withTransform, transforms: ['recording'], config })).toThrow(ConfigError);
      expect(transformed).toBe(0);
      expect(flags().every(Boolean)).toBe(true);
      expect(model.adapterInputScope).toBeNull();
    }
    const saved = create({ r: 2, targetModules: ['c_attn', 'c_proj', 'c_fc'] });
    const files = serializeAdapter(saved);
    saved.dispose();
    // The saved adapter targets a layer (c_fc) the model lacks under that name: refused, model unchanged.
    const narrow = new Gpt2ShapedTree({ width: 8 });
    await expect(loadAdapterModel(narrow, { files }, { registry })).rejects.toThrow();
    expect(narrow.namedParameters().every(([, variable]) => variable.trainable)).toBe(true);
    expect(narrow.adapterInputScope).toBeNull();
    // …and it can still be wrapped.
    AdapterModel.create(narrow, { registry, config: { r: 2, targetModules: ['c_attn'] } }).dispose();
    model.dispose();
    narrow.dispose();
  });

  it('wraps the targets, freezes the base and reports parameters as PEFT does', () => {
    const adapterModel = create({ r: 4, targetModules: ['c_attn'] });
    expect(adapterModel.adapterLayers().map(([p]) => p)).toEqual(['transformer.h.0.attn.c_attn', 'transformer.h.1.attn.c_attn']);
    const adapterSize = 2 * (4 * 16 + 48 * 4);
    const report = adapterModel.trainableParameters();
    expect(report.trainable).toBe(adapterSize);
    const base = new Gpt2ShapedTree({ width: 16 });
    expect(report.total).toBe(base.parameterCount() + adapterSize);
    expect(report.line).toBe(
      `trainable params: ${adapterSize.toLocaleString('en-US')} || all params: ${report.total.toLocaleString('en-US')} || trainable%: ${((100 * adapterSize) / report.total).toFixed(4)}`,
    );
    expect(adapterModel.model.namedParameters().some(([p]) => p === 'transformer.h.0.attn.c_attn.lora_A.default.weight')).toBe(true);
    base.dispose();
    adapterModel.dispose();
  });

  it('expands all-linear to every linear layer except the output head', () => {
    const adapterModel = create({ targetModules: 'all-linear' });
    const paths = adapterModel.adapterLayers().map(([p]) => p);
    expect(paths).toHaveLength(8);
    expect(paths).not.toContain('lm_head');
    expect(adapterModel.adapterConfig('default').targetModules).toEqual(paths);
    adapterModel.dispose();
  });

  it('throws a ConfigError naming targetModules when nothing matches', () => {
    expect(() => create({ targetModules: ['q_proj'] })).toThrow(ConfigError);
    expect(() => create({ targetModules: ['q_proj'] })).toThrow(/targetModules.*Linear layers here are named like: transformer.h.0.attn.c_attn/su);
  });

  it('applies rank_pattern and alpha_pattern per module', () => {
    const adapterModel = create({ r: 4, loraAlpha: 8, targetModules: ['c_attn', 'c_proj'], rankPattern: { 'h.1.attn.c_attn': 2 }, alphaPattern: { 'mlp.c_proj': 32 } });
    const byPath = new Map(adapterModel.adapterInstances('default').map(([p, i]) => [p, i as LoraAdapter]));
    expect(byPath.get('transformer.h.1.attn.c_attn')!.r).toBe(2);
    expect(byPath.get('transformer.h.0.attn.c_attn')!.r).toBe(4);
    expect(byPath.get('transformer.h.0.mlp.c_proj')!.scaling).toBe(8);
    expect(byPath.get('transformer.h.0.attn.c_proj')!.scaling).toBe(2);
    adapterModel.dispose();
  });

  it('sums several active adapters, switches, disables (scoped) and deletes', async () => {
    const adapterModel = create({ r: 2, targetModules: ['c_attn'] });
    adapterModel.addAdapter('second', { config: { r: 3, targetModules: ['c_attn'] } });
    randomiseB(adapterModel, 'default', 10);
    randomiseB(adapterModel, 'second', 20);
    await withoutTensorLeaks(() => {
      const x = input();
      const base = adapterModel.disableAdapters(() => adapterModel.model.forward(x));
      const first = adapterModel.model.forward(x);
      adapterModel.setAdapter('second');
      const second = adapterModel.model.forward(x);
      adapterModel.setAdapter(['default', 'second']);
      const both = adapterModel.model.forward(x);
      // Inside one layer the deltas add; through the network only approximately, so compare one layer.
      const layer = adapterModel.model.getSubmodule('transformer.h.0.attn.c_attn') as AdapterLayer;
      const h = tf.randomNormal([4, 16], 0, 1, 'float32', 3);
      const sumBoth = layer.forward(h);
      layer.setActiveAdapters([]);
      const plain = layer.forward(h);
      layer.setActiveAdapters(['default']);
      const onlyFirst = layer.forward(h);
      layer.setActiveAdapters(['second']);
      const onlySecond = layer.forward(h);
      const expectedSum = tf.tidy(() => tf.sub(tf.add(onlyFirst, onlySecond), plain));
      expectTensorsClose(sumBoth, expectedSum, { atol: 1e-5, rtol: 1e-5 });
      expectedSum.dispose();
      layer.setActiveAdapters(adapterModel.activeAdapters);
      expect(tf.tidy(() => tf.max(tf.abs(tf.sub(first, second))).dataSync()[0]!)).toBeGreaterThan(1e-3);
      expect(tf.tidy(() => tf.max(tf.abs(tf.sub(both, base))).dataSync()[0]!)).toBeGreaterThan(1e-3);
      const againBase = adapterModel.disableAdapters(() => adapterModel.model.forward(x));
      expectTensorsClose(againBase, base, { atol: 0, rtol: 0 });
      tf.dispose([x, base, first, second, both, h, sumBoth, plain, onlyFirst, onlySecond, againBase]);
    });
    // Only active adapters train.
    const trainable = adapterModel.model.namedParameters().filter(([, v]) => v.trainable).map(([p]) => p);
    expect(trainable.some((p) => p.includes('.second.'))).toBe(true);
    expect(trainable.some((p) => p.includes('.default.'))).toBe(true);
    adapterModel.setAdapter('second');
    expect(adapterModel.model.namedParameters().filter(([, v]) => v.trainable).every(([p]) => p.includes('.second.'))).toBe(true);
    // Deleting the only active adapter activates the alphabetically first remaining one.
    adapterModel.deleteAdapter('second');
    expect(adapterModel.activeAdapters).toEqual(['default']);
    adapterModel.deleteAdapter('default');
    // With no adapters left, the wrappers are gone and the paths are the base model's again.
    expect(adapterModel.model.getSubmodule('transformer.h.0.attn.c_attn')).toBeInstanceOf(Linear);
    adapterModel.addAdapter('default', { config: { r: 2, targetModules: ['c_attn'] } });
    adapterModel.setAdapter('default');
    expect(adapterModel.model.namedParameters().some(([p]) => p.includes('.second.'))).toBe(false);
    adapterModel.dispose();
  });

  it('replaces layers all or nothing: a base transform that fails on a later layer leaves the earlier ones as they were', async () => {
    let calls = 0;
    const failingTransform: BaseTransform = {
      specificationVersion: PLUGIN_SPECIFICATION_VERSION,
      kind: 'base-transform',
      name: 'stand-in',
      packageName: '@lora-internal/stand-in',
      shouldTransform: () => true,
      transform: (module) => {
        calls += 1;
        if (calls === 3) throw new LoraError('[@lora-internal/stand-in] Cannot transform the third layer.');
        return new NonFloatBaseLayer(module);
      },
    };
    const withTransform = createLoraRegistry({ plugins: [lora({ seed: 1 }), failingTransform] });
    const model = new Gpt2ShapedTree({ width: 16 });
    const weights = (): Float32Array[] => model.namedParameters().map(([, variable]) => variable.dataSync() as Float32Array);
    const before = weights();
    await withoutTensorLeaks(() => {
      expect(() => AdapterModel.create(model, { registry: withTransform, transforms: ['stand-in'], config: { r: 2, targetModules: ['c_attn'] } })).toThrow(/third layer/u);
    });
    expect(calls).toBe(3);
    expect(model.namedModules().filter(([, module]) => module instanceof NonFloatBaseLayer)).toHaveLength(0);
    weights().forEach((weight, i) => expect(weight).toEqual(before[i]));
    model.dispose();
  });

  it('mergeAndUnload({ dequantize }) refused puts the non-Linear bases back and re-merges what was merged', async () => {
    const standIn: BaseTransform = {
      specificationVersion: PLUGIN_SPECIFICATION_VERSION,
      kind: 'base-transform',
      name: 'stand-in',
      packageName: '@lora-internal/stand-in',
      shouldTransform: (path) => path.endsWith('c_attn') || path.endsWith('c_fc'),
      transform: (module) => new NonFloatBaseLayer(module),
    };
    const registryWith = createLoraRegistry({ plugins: [lora({ seed: 1 }), standIn] });
    const adapterModel = AdapterModel.create(new Gpt2ShapedTree({ width: 16 }), { registry: registryWith, transforms: ['stand-in'], config: { r: 4, targetModules: ['c_attn', 'c_fc'] } });
    adapterModel.addAdapter('second', { config: { r: 2, targetModules: ['c_attn', 'c_fc'] } });
    randomiseB(adapterModel, 'default', 40);
    randomiseB(adapterModel, 'second', 41);
    adapterModel.setAdapter(['default', 'second']);
    adapterModel.merge({ adapterNames: ['default'] });
    const last = adapterModel.adapterInstances('second').at(-1)![1] as LoraAdapter;
    tf.tidy(() => last.loraB.assign(tf.fill(last.loraB.shape, Number.NaN)));
    const x = input();
    const bases = (): string[] => adapterModel.adapterLayers().map(([, layer]) => layer.base_layer.constructor.name);
    const denseWeights = (): Float32Array[] => tf.tidy(() => adapterModel.adapterLayers().map(([, layer]) => layer.base_layer.denseWeight().dataSync() as Float32Array));
    const [basesBefore, weightsBefore, mergedBefore] = [bases(), denseWeights(), adapterModel.adapterLayers().map(([, layer]) => [...layer.mergedAdapters])];
    expect(basesBefore.every((name) => name === 'NonFloatBaseLayer')).toBe(true);
    const count = tf.memory().numTensors;
    expect(() => adapterModel.mergeAndUnload({ dequantize: true, safe: true })).toThrow(NonFiniteTensorError);
    expect(tf.memory().numTensors).toBe(count);
    expect(bases()).toEqual(basesBefore);
    expect(adapterModel.adapterLayers().map(([, layer]) => [...layer.mergedAdapters])).toEqual(mergedBefore);
    // W + ΔW(default) again: float32 rounding of the unmerge and merge only.
    denseWeights().forEach((weight, i) => expectTensorsClose(weight, weightsBefore[i]!, { atol: 1e-5, rtol: 0 }));
    tf.dispose(x);
    adapterModel.dispose();
  });

  it('says it was disposed when an AdapterModel or its layers are used afterwards', () => {
    const adapterModel = create({ r: 2, targetModules: ['c_attn'] });
    const layer = adapterModel.adapterLayers()[0]![1];
    adapterModel.dispose();
    adapterModel.dispose();
    const x = input();
    const disposed = /^\[@lora\/core\] AdapterModel\.(\w+): this AdapterModel was disposed, and its model's weights with it; load or create the model and the AdapterModel again\.$/u;
    expect(() => adapterModel.forward({}, x)).toThrow(disposed);
    expect(() => adapterModel.merge()).toThrow(disposed);
    expect(() => adapterModel.addAdapter('more', { config: { r: 2, targetModules: ['c_attn'] } })).toThrow(disposed);
    expect(() => adapterModel.setAdapter('default')).toThrow(disposed);
    expect(() => adapterModel.namedTrainableVariables()).toThrow(disposed);
    expect(() => layer.forward(x)).toThrow(/^\[@lora\/core\] transformer\.h\.0\.attn\.c_attn: this layer was disposed \(with its model or AdapterModel\)/u);
    tf.dispose(x);
  });

  it('blames layersToTransform, not the target names, when the targets are only in layers it leaves out', () => {
    const model = new Gpt2ShapedTree({ width: 16 });
    expect(() => AdapterModel.create(model, { registry, config: { r: 2, targetModules: ['c_attn'], layersToTransform: [5] } })).toThrow(
      '[lora] Invalid config: layersToTransform must be layer indices holding the targets, got [5]. The targets are in layers 0, 1.',
    );
    expect(() => AdapterModel.create(model, { registry, config: { r: 2, targetModules: ['q_proj'], layersToTransform: [0] } })).toThrow(/targetModules must be names matching/u);
    AdapterModel.create(model, { registry, config: { r: 2, targetModules: ['c_attn'], layersToTransform: [1] } }).dispose();
  });

  it('refuses setAdapter with no name or a name twice, leaving the active adapters as they were', () => {
    const adapterModel = create({ r: 2, targetModules: ['c_attn'] });
    adapterModel.addAdapter('second', { config: { r: 3, targetModules: ['c_attn'] } });
    adapterModel.setAdapter(['default', 'second']);
    const trainable = (): string[] => adapterModel.model.namedParameters().filter(([, v]) => v.trainable).map(([p]) => p);
    const before = trainable();
    expect(() => adapterModel.setAdapter([])).toThrow(/setAdapter\(\[\]\) would leave no adapter active and nothing trainable; .* disableAdapters\(fn\)\.$/u);
    expect(() => adapterModel.setAdapter(['second', 'default', 'second'])).toThrow(/^\[@lora\/core\] setAdapter: adapter "second" is named twice;/u);
    expect(adapterModel.activeAdapters).toEqual(['default', 'second']);
    expect(trainable()).toEqual(before);
    adapterModel.dispose();
  });

  it('names the missing registry of an untyped caller with a ConfigError', async () => {
    const model = new Gpt2ShapedTree({ width: 16, seed: 1 });
    const loose = { registry: undefined } as unknown as { registry: ReturnType<typeof createLoraRegistry>; config: unknown };
    expect(() => AdapterModel.create(model, { ...loose, config: { r: 2, targetModules: ['c_attn'] } })).toThrow(
      /^\[@lora\/core\] Invalid config: registry must be a registry from createLoraRegistry\(\{ plugins: \[\.\.\.\] \}\), got undefined\. Pass it to AdapterModel\.create/u,
    );
    expect(() => new AdapterModel(model, loose)).toThrow(ConfigError);
    await expect(loadAdapterModel(model, { files: {} } as never, loose)).rejects.toThrow(/registry must be a registry from createLoraRegistry/u);
    // Nothing was frozen on the way.
    expect(model.namedParameters().every(([, v]) => v.trainable)).toBe(true);
    model.dispose();
  });

  it('refuses to delete a merged adapter', () => {
    const adapterModel = create({ r: 2, targetModules: ['c_attn'] });
    adapterModel.merge();
    expect(() => adapterModel.deleteAdapter('default')).toThrow(/merged/u);
    adapterModel.unmerge();
    adapterModel.deleteAdapter('default');
    adapterModel.dispose();
  });

  it('merges all or nothing: a NaN found by a safe merge in the last layer takes out the merges already made in the others', () => {
    const adapterModel = create({ r: 4, targetModules: ['c_attn', 'c_fc'] });
    randomiseB(adapterModel, 'default', 40);
    const instances = adapterModel.adapterInstances('default');
    const last = instances.at(-1)![1] as LoraAdapter;
    tf.tidy(() => last.loraB.assign(tf.fill(last.loraB.shape, Number.NaN)));
    const weightsOf = (): Float32Array[] => tf.tidy(() => adapterModel.adapterLayers().map(([, layer]) => layer.base_layer.denseWeight().dataSync() as Float32Array));
    const before = weightsOf();
    const [lastPath] = instances.at(-1)!;
    const weightSize = tf.tidy(() => adapterModel.adapterLayers().find(([path]) => path === lastPath)![1].base_layer.denseWeight().size);
    let error: unknown;
    try {
      adapterModel.merge({ safe: true });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(NonFiniteTensorError);
    expect((error as NonFiniteTensorError).message).toBe(
      `[@lora/core] Not merging adapter "default": the merged tensor "${lastPath}.weight" holds ${weightSize} non-finite values (first: NaN); the base weight was not changed. ` +
        'The adapter or the base holds non-finite weights (a diverged run, or weights loaded with allowNonFinite); retrain the adapter, or leave it unmerged.',
    );
    expect(adapterModel.adapterLayers().every(([, layer]) => layer.mergedAdapters.length === 0)).toBe(true);
    // W + ΔW − ΔW: float32 rounding only (without the roll-back the first layers would hold W + ΔW).
    weightsOf().forEach((weight, i) => expectTensorsClose(weight, before[i]!, { atol: 1e-5, rtol: 0 }));
    adapterModel.dispose();
  });

  it('mergeAndUnload returns the plain model with the same outputs', async () => {
    const adapterModel = create({ r: 4, targetModules: ['c_attn', 'c_fc'] });
    randomiseB(adapterModel, 'default', 30);
    const x = input();
    const expected = adapterModel.model.forward(x);
    const model = adapterModel.mergeAndUnload();
    expect(model.getSubmodule('transformer.h.0.attn.c_attn')).toBeInstanceOf(Linear);
    expect(model.namedParameters().some(([p]) => p.includes('lora'))).toBe(false);
    const actual = model.forward(x);
    expectTensorsClose(actual, expected, { atol: 1e-5, rtol: 1e-4 });
    tf.dispose([x, expected, actual]);
    model.dispose();
  });

  it('frees every adapter tensor on mergeAndUnload, merged ones included', () => {
    const base = tf.memory().numTensors;
    const plain = new Gpt2ShapedTree({ width: 16 });
    const baseTensors = tf.memory().numTensors - base;
    plain.dispose();
    const before = tf.memory().numTensors;
    const adapterModel = create({ r: 4, targetModules: ['c_attn'] });
    adapterModel.addAdapter('other', { config: { r: 2, targetModules: ['c_attn'] } });
    const model = adapterModel.mergeAndUnload();
    expect(tf.memory().numTensors - before).toBe(baseTensors);
    model.dispose();
  });

  it('restores a base snapshot on unmerge when the base offers one, and counts stored parameters', () => {
    const adapterModel = create({ r: 2, targetModules: ['c_attn'] });
    randomiseB(adapterModel, 'default', 60);
    const layer = adapterModel.model.getSubmodule('transformer.h.0.attn.c_attn') as AdapterLayer;
    const base = layer.base_layer as Linear & { snapshotForMerge?: () => unknown; restoreSnapshot?: (s: unknown) => void };
    const restored: unknown[] = [];
    base.snapshotForMerge = () => tf.clone(base.weight);
    base.restoreSnapshot = (snapshot) => {
      restored.push(snapshot);
      base.weight.assign(snapshot as tf.Tensor);
      (snapshot as tf.Tensor).dispose();
    };
    const original = base.weight.dataSync().slice();
    adapterModel.merge();
    adapterModel.unmerge();
    expect(restored).toHaveLength(1);
    expect(Buffer.from(base.weight.dataSync().buffer).equals(Buffer.from(original.buffer))).toBe(true);
    const total = adapterModel.trainableParameters().total;
    (base as unknown as { storedParameterCount: () => number }).storedParameterCount = () => 1000;
    expect(adapterModel.trainableParameters().total).toBe(total + 1000);
    adapterModel.dispose();
  });

  it('combines adapters: cat exactly, svd exactly at full rank without double scaling, linear for one adapter', async () => {
    const adapterModel = create({ r: 2, loraAlpha: 8, targetModules: ['c_attn'] });
    adapterModel.addAdapter('other', { config: { r: 3, loraAlpha: 3, targetModules: ['c_attn'] } });
    randomiseB(adapterModel, 'default', 40);
    randomiseB(adapterModel, 'other', 50);
    const weights = [0.7, -1.3];
    // Each combination adds exactly its own A and B per layer (2 layers) and frees everything else.
    const before = tf.memory().numTensors;
    adapterModel.addWeightedAdapter({ adapters: ['default', 'other'], weights, adapterName: 'cat', combinationType: 'cat' });
    adapterModel.addWeightedAdapter({ adapters: ['default', 'other'], weights, adapterName: 'svd', combinationType: 'svd', svdRank: 5 });
    adapterModel.addWeightedAdapter({ adapters: ['other'], weights: [2], adapterName: 'single', combinationType: 'svd' });
    expect(tf.memory().numTensors - before).toBe(3 * 2 * 2);
    await withoutTensorLeaks(() => {
      for (const [, layer] of adapterModel.adapterLayers()) {
        const expected = tf.tidy(() =>
          tf.add(
            tf.mul(layer.adapter('default')!.deltaWeight(layer.base_layer), weights[0]!),
            tf.mul(layer.adapter('other')!.deltaWeight(layer.base_layer), weights[1]!),
          ),
        );
        const cat = layer.adapter('cat')!.deltaWeight(layer.base_layer);
        const svd = layer.adapter('svd')!.deltaWeight(layer.base_layer);
        expectTensorsClose(cat, expected, { atol: 1e-6, rtol: 1e-5 });
        expectTensorsClose(svd, expected, { atol: 1e-5, rtol: 1e-4 });
        const single = layer.adapter('single')!.deltaWeight(layer.base_layer);
        const singleExpected = tf.tidy(() => tf.mul(layer.adapter('other')!.deltaWeight(layer.base_layer), 2));
        expectTensorsClose(single, singleExpected, { atol: 1e-6, rtol: 1e-5 });
        tf.dispose([expected, cat, svd, single, singleExpected]);
      }
    });
    expect((adapterModel.adapterConfig('cat').config as unknown as { r: number }).r).toBe(5);
    expect(() => adapterModel.addWeightedAdapter({ adapters: ['default', 'other'], weights, adapterName: 'lin', combinationType: 'linear' })).toThrow(
      ConfigError,
    );
    // Refused before anything is added: a NaN weight, an unknown combination, a bad svdRank.
    const refused: [Partial<Parameters<typeof adapterModel.addWeightedAdapter>[0]>, RegExp][] = [
      [{ weights: [Number.NaN, 1] }, /weights must be finite numbers/u],
      [{ combinationType: 'bogus' as 'svd' }, /combinationType must be 'cat', 'linear' or 'svd', got "bogus"/u],
      [{ combinationType: 'svd', svdRank: -1 }, /svdRank must be a positive integer \(the combined adapter's rank\), got -1/u],
    ];
    for (const [change, message] of refused) {
      expect(() => adapterModel.addWeightedAdapter({ adapters: ['default', 'other'], weights, adapterName: 'refused', combinationType: 'cat', ...change })).toThrow(message);
    }
    expect(adapterModel.adapterNames).not.toContain('refused');
    expect(() => adapterModel.merge({ adapterNames: ['nope'] })).toThrow(/^\[@lora\/core\] No adapter named "nope" \(have: default, other, cat, svd, single\)\.$/u);
    expect(adapterModel.adapterLayers().every(([, layer]) => layer.mergedAdapters.length === 0)).toBe(true);
    adapterModel.dispose();
  });

  it('trains biases by bias mode and wraps modules_to_save', () => {
    const all = create({ targetModules: ['c_attn'], bias: 'all' });
    const allTrainable = all.model.namedParameters().filter(([, v]) => v.trainable).map(([p]) => p);
    expect(allTrainable.filter((p) => p.endsWith('.bias'))).toHaveLength(8);
    all.dispose();
    const only = create({ targetModules: ['c_attn'], bias: 'lora_only' });
    const onlyTrainable = only.model.namedParameters().filter(([, v]) => v.trainable).map(([p]) => p);
    expect(onlyTrainable.filter((p) => p.endsWith('.bias'))).toEqual(['transformer.h.0.attn.c_attn.base_layer.bias', 'transformer.h.1.attn.c_attn.base_layer.bias']);
    only.dispose();
    const saved = create({ targetModules: ['c_attn'], modulesToSave: ['lm_head'] });
    expect(saved.model.getSubmodule('lm_head')).toBeInstanceOf(ModulesToSaveWrapper);
    expect(saved.model.namedParameters().filter(([, v]) => v.trainable).map(([p]) => p)).toContain('lm_head.modules_to_save.default.weight');
    saved.dispose();
  });
});
