import * as tf from '@tensorflow/tfjs-core';
import { AdapterLayer, Linear, Module, ModuleList, type BaseLayer, type BaseTransform } from '@lora/core';
import { HyperLoraAdapter, HyperLoraState, parseHyperLoraConfig, type ConditionInput } from '../src/index.js';

class Block extends Module {
  readonly q: Linear;
  readonly v: Linear;

  constructor(seed: number) {
    super();
    this.q = this.registerModule('q', new Linear({ inFeatures: 6, outFeatures: 5, seed }));
    this.v = this.registerModule('v', new Linear({ inFeatures: 5, outFeatures: 6, seed: seed + 1 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => tf.add(x, tf.tanh((this.getSubmodule('v') as Module & BaseLayer).forward(tf.tanh((this.getSubmodule('q') as Module & BaseLayer).forward(x))))));
  }
}

class Body extends Module {
  readonly layers: ModuleList<Block>;

  constructor(seed: number) {
    super();
    this.layers = this.registerModule('layers', new ModuleList([new Block(seed), new Block(seed + 10)]));
  }
}

/** A two-block model whose targets are `body.layers.{0,1}.{q,v}` (2 layers × 2 module types), plus a head. */
export class TinyModel extends Module {
  readonly body: Body;
  readonly head: Linear;

  constructor(seed = 1) {
    super();
    this.body = this.registerModule('body', new Body(seed));
    this.head = this.registerModule('head', new Linear({ inFeatures: 6, outFeatures: 3, seed: seed + 50 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      let h = x;
      for (const block of this.body.layers) h = block.forward(h);
      return this.head.forward(h);
    });
  }
}

/** A discrete two-factor condition (src × tgt) with 3 languages each. */
export const LANGUAGES = { kind: 'discrete', factors: [{ name: 'src', values: ['en', 'fr', 'de'], dim: 4 }, { name: 'tgt', values: ['en', 'fr', 'de'], dim: 4 }] } as const;

/** A small HyperLoRA config on {@link TinyModel}'s q and v. */
export function tinyConfig(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { r: 2, loraAlpha: 4, targetModules: ['q', 'v'], condition: LANGUAGES, trunkWidth: 8, trunkDepth: 2, layerEmbeddingDim: 3, typeEmbeddingDim: 3, basisSize: 3, ...overrides };
}

/** A model with a HyperLoRA on every q and v. */
export interface HyperModel {
  readonly model: TinyModel;
  readonly state: HyperLoraState;
  dispose(): void;
}

/** Wrap {@link TinyModel}'s q and v with a HyperLoRA adapter named `default`. */
export function createHyperModel(
  options: { config?: Record<string, unknown>; seed?: number; cacheBytes?: number; modelSeed?: number; transform?: BaseTransform } = {},
): HyperModel {
  const model = new TinyModel(options.modelSeed ?? 1);
  model.setTrainable(false);
  const config = parseHyperLoraConfig(options.config ?? tinyConfig());
  const paths = model.namedModules().filter(([path]) => /\.(q|v)$/u.test(path)).map(([path]) => path);
  if (options.transform) {
    for (const path of paths) {
      const original = model.getSubmodule(path) as Module & BaseLayer;
      model.setSubmodule(path, options.transform.transform(original, path));
      original.dispose();
    }
  }
  const targets = paths.map((path) => [path, model.getSubmodule(path) as Module & BaseLayer] as const);
  const state = new HyperLoraState({ adapterName: 'default', config, targets, seed: options.seed ?? 3, cacheBytes: options.cacheBytes });
  for (const [path, base] of targets) {
    const layer = new AdapterLayer(base);
    layer.addAdapter('default', new HyperLoraAdapter({ state, modulePath: path }));
    layer.setActiveAdapters(['default']);
    model.setSubmodule(path, layer);
  }
  return {
    model,
    state,
    dispose() {
      state.dispose();
      model.dispose();
    },
  };
}

/** Run `fn` (a forward pass) with `condition` as the per-forward input, as the adapter model does (endForward also when beginForward throws). */
export function withCondition<T>(hyper: HyperModel, condition: ConditionInput | undefined, fn: () => T): T {
  try {
    hyper.state.beginForward({ inputs: condition === undefined ? {} : { condition }, training: hyper.model.training });
    return fn();
  } finally {
    hyper.state.endForward();
  }
}

/** Give every generator variable random values (so B ≠ 0) and drop the cache. */
export function randomizeGenerator(state: HyperLoraState, seed = 100, scale = 0.3): void {
  for (const [, variable] of state.namedTensors()) {
    tf.tidy(() => variable.assign(tf.add(variable, tf.randomNormal(variable.shape, 0, scale, 'float32', seed++))));
  }
  state.invalidate();
}

/** A one-factor discrete condition (`task` ∈ {a, b}). */
export const TASKS = { kind: 'discrete', factors: [{ name: 'task', values: ['a', 'b'], dim: 4 }] };

/** Configs parseHyperLoraConfig rejects, with the field its ConfigError must name. */
export const INVALID_CONFIGS: readonly [Record<string, unknown>, string][] = [
  [{ r: 0, condition: TASKS }, 'r'],
  [{ targetModules: ['query'] }, 'condition'],
  [{ condition: { kind: 'discrete', factors: [] } }, 'condition.factors'],
  [{ condition: { kind: 'discrete', factors: [{ name: 'task', values: ['a', 'a'] }] } }, 'condition.factors.task.values'],
  [{ condition: { kind: 'discrete', factors: [{ name: 'task', values: ['a'] }, { name: 'task', values: ['b'] }] } }, 'condition.factors'],
  [{ condition: { kind: 'discrete', factors: [{ name: 'task', values: ['a=b'] }] } }, 'condition.factors.0.values.0'],
  [{ condition: { kind: 'continuous', size: 0 } }, 'condition.size'],
  [{ condition: { kind: 'continuous', size: 4 }, conditionDropout: 0.1 }, 'conditionDropout'],
  [{ condition: TASKS, headMode: 'mix' }, 'headMode'],
  [{ condition: TASKS, conditionDropout: 1 }, 'conditionDropout'],
  [{ condition: TASKS, rr: 4 }, 'rr'],
];
