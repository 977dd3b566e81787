import * as tf from '@tensorflow/tfjs-core';
import {
  AdamW,
  AdapterModel,
  createLoraRegistry,
  initRuntime,
  Linear,
  loadAdapterModel,
  lora,
  LoraError,
  Module,
  readSafetensorsFile,
  saveAdapter,
  type LoraConfig,
} from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dora, DoubleLoraAdapter, doubleLora, exportDoubleLoraAsLora, saveDoubleLoraAsLora } from '../src/index.js';
import {
  linear64,
  makeLinear,
  matmul64,
  maxAbsoluteError,
  maxRelativeError,
  randomValues,
  setAdapterTensors,
  transpose64,
  ulp32,
  wrap,
} from './helpers.js';

const IN = 6;
const OUT = 5;
const ROWS = 4;
const W = randomValues(OUT * IN, 1, 0.6);
const BIAS = randomValues(OUT, 2, 0.3);
const X = randomValues(ROWS * IN, 3, 1);
const LOSS_WEIGHTS = randomValues(ROWS * OUT, 4, 1);

interface Pair {
  A: number[];
  B: number[];
  r: number;
  s: number;
}
const pair1: Pair = { A: randomValues(3 * IN, 20, 0.5), B: randomValues(OUT * 3, 21, 0.4), r: 3, s: 8 / 3 };
const pair2: Pair = { A: randomValues(2 * IN, 22, 0.5), B: randomValues(OUT * 2, 23, 0.4), r: 2, s: 0.5 };

function pairOutput64(x: readonly number[], rows: number, p: Pair): number[] {
  const xA = matmul64(x, transpose64(p.A, p.r, IN), rows, IN, p.r);
  return matmul64(xA, transpose64(p.B, OUT, p.r), rows, p.r, OUT).map((v) => v * p.s);
}

function build(options: { fanInFanOut?: boolean; dropout1?: number; dropout2?: number } = {}) {
  const linear = makeLinear({ W, bias: BIAS, inF: IN, out: OUT, fanInFanOut: options.fanInFanOut });
  const adapter = new DoubleLoraAdapter({
    inFeatures: IN,
    outFeatures: OUT,
    first: { r: 3, alpha: 8, dropout: options.dropout1 },
    second: { r: 2, alpha: 1, dropout: options.dropout2 },
  });
  setAdapterTensors(adapter, { 'lora_A1.weight': pair1.A, 'lora_B1.weight': pair1.B, 'lora_A2.weight': pair2.A, 'lora_B2.weight': pair2.B });
  return { linear, adapter, layer: wrap(linear, { default: adapter }) };
}

describe('DoubleLoraAdapter', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it.each([false, true])('computes x·Wᵀ + b + s₁·B₁A₁x + s₂·B₂A₂x and its gradients as float64 (fanInFanOut %s)', async (fanInFanOut) => {
    await withoutTensorLeaks(() => {
      const { adapter, layer } = build({ fanInFanOut });
      expect(adapter.namedTensors().map(([key, v]) => [key, v.shape])).toEqual([
        ['lora_A1.weight', [3, IN]],
        ['lora_B1.weight', [OUT, 3]],
        ['lora_A2.weight', [2, IN]],
        ['lora_B2.weight', [OUT, 2]],
      ]);
      const x = tf.tensor2d(X, [ROWS, IN]);
      const y = layer.forward(x);
      const first = pairOutput64(X, ROWS, pair1);
      const second = pairOutput64(X, ROWS, pair2);
      const expected = linear64(X, W, BIAS, ROWS, IN, OUT).map((v, i) => v + first[i]! + second[i]!);
      const forwardError = maxRelativeError(y.dataSync(), expected);
      const weights = tf.tensor2d(LOSS_WEIGHTS, [ROWS, OUT]);
      const variables = adapter.namedTensors().map(([, v]) => v);
      const { grads, value } = tf.variableGrads(() => tf.sum(tf.mul(layer.forward(x), weights)) as tf.Scalar, variables);
      // dL/dB = s·Rᵀ·(x·Aᵀ), dL/dA = s·(R·B)ᵀ·x for each pair.
      const gradientErrors = [pair1, pair2].flatMap((p, index) => {
        const xA = matmul64(X, transpose64(p.A, p.r, IN), ROWS, IN, p.r);
        const dB = matmul64(transpose64(LOSS_WEIGHTS, ROWS, OUT), xA, OUT, ROWS, p.r).map((v) => v * p.s);
        const RB = matmul64(LOSS_WEIGHTS, p.B, ROWS, OUT, p.r);
        const dA = matmul64(transpose64(RB, ROWS, p.r), X, p.r, ROWS, IN).map((v) => v * p.s);
        return [
          maxRelativeError(grads[variables[index * 2]!.name]!.dataSync(), dA),
          maxRelativeError(grads[variables[index * 2 + 1]!.name]!.dataSync(), dB),
        ];
      });
      console.log(`double-lora (fanInFanOut ${fanInFanOut}): forward rel err ${forwardError.toExponential(2)}, gradient rel errs ${gradientErrors.map((e) => e.toExponential(2)).join(', ')}`);
      expect(forwardError).toBeLessThan(1e-6);
      for (const error of gradientErrors) expect(error).toBeLessThan(1e-5);
      tf.dispose([x, y, weights, value, ...Object.values(grads)]);
      layer.dispose();
    });
  });

  it('merges ΔW = s₁B₁A₁ + s₂B₂A₂, merged ≡ unmerged, and unmerge restores W within 1 ulp', async () => {
    await withoutTensorLeaks(() => {
      const { linear, layer } = build({ fanInFanOut: true });
      const x = tf.tensor2d(X, [ROWS, IN]);
      const unmerged = layer.forward(x);
      layer.merge();
      const mergedWeight = linear.denseWeight();
      const delta1 = matmul64(pair1.B, pair1.A, OUT, 3, IN);
      const delta2 = matmul64(pair2.B, pair2.A, OUT, 2, IN);
      const expected = W.map((w, i) => w + pair1.s * delta1[i]! + pair2.s * delta2[i]!);
      const mergeError = maxRelativeError(mergedWeight.dataSync(), expected);
      const merged = layer.forward(x);
      const equivalence = maxRelativeError(merged.dataSync(), unmerged.dataSync());
      layer.unmerge();
      const restored = linear.denseWeight();
      // (W + ΔW) − ΔW: one rounding in each step, so at most 1 ulp of max(|W|, |W + ΔW|).
      const ulps = Math.max(...Array.from(restored.dataSync()).map((v, i) => Math.abs(v - W[i]!) / ulp32(Math.max(Math.abs(W[i]!), Math.abs(expected[i]!)))));
      console.log(`double-lora merge: rel err ${mergeError.toExponential(2)}, merged vs unmerged ${equivalence.toExponential(2)}, unmerge ${ulps} ulp`);
      expect(mergeError).toBeLessThan(1e-6);
      expect(equivalence).toBeLessThan(1e-5);
      expect(ulps).toBeLessThanOrEqual(1);
      tf.dispose([x, unmerged, mergedWeight, merged, restored]);
      layer.dispose();
    });
  });

  it('applies each pair’s own dropout only to that pair', async () => {
    await withoutTensorLeaks(() => {
      const x = tf.tensor2d(X, [ROWS, IN]);
      // Pair 1 without dropout, pair 2 switched off (B₂ = 0): training output = eval output.
      const a = build({ dropout1: 0, dropout2: 0.9 });
      tf.tidy(() => a.adapter.second.loraB.assign(tf.zeros([OUT, 2])));
      a.layer.train();
      const trainingA = a.layer.forward(x);
      a.layer.eval();
      const evalA = a.layer.forward(x);
      expect(maxAbsoluteError(trainingA.dataSync(), evalA.dataSync())).toBeLessThan(1e-6);
      // Pair 2 with dropout 0.5 and pair 1 off: training output differs from eval output.
      const b = build({ dropout1: 0, dropout2: 0.5 });
      tf.tidy(() => b.adapter.first.loraB.assign(tf.zeros([OUT, 3])));
      b.layer.train();
      const trainingB = b.layer.forward(x);
      b.layer.eval();
      const evalB = b.layer.forward(x);
      expect(maxAbsoluteError(trainingB.dataSync(), evalB.dataSync())).toBeGreaterThan(1e-3);
      tf.dispose([x, trainingA, evalA, trainingB, evalB]);
      a.layer.dispose();
      b.layer.dispose();
    });
  });
});

class Net extends Module {
  readonly query: Linear;
  readonly conv: Linear;
  readonly head: Linear;

  constructor() {
    super();
    this.query = this.registerModule('query', new Linear({ inFeatures: 12, outFeatures: 10, seed: 1 }));
    this.conv = this.registerModule('conv', new Linear({ inFeatures: 10, outFeatures: 12, fanInFanOut: true, seed: 2 }));
    this.head = this.registerModule('head', new Linear({ inFeatures: 12, outFeatures: 5, seed: 3 }));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.head.forward(tf.tanh(this.conv.forward(tf.tanh(this.query.forward(x))))));
  }
}

describe('doubleLora() in an AdapterModel', () => {
  const registry = createLoraRegistry({ plugins: [lora(), dora(), doubleLora({ seed: 3 })] });
  let directory: string;
  beforeAll(async () => {
    await initRuntime();
    directory = await mkdtemp(path.join(tmpdir(), 'lora-double-'));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  function create(): AdapterModel<Net> {
    const adapterModel = AdapterModel.create(new Net(), {
      registry,
      plugin: 'double-lora',
      config: { r1: 4, loraAlpha1: 8, r2: 2, loraAlpha2: 1, loraDropout2: 0.1, targetModules: ['query', 'conv'], modulesToSave: ['head'] },
    });
    let seed = 50;
    for (const [, instance] of adapterModel.adapterInstances('default')) {
      for (const [, variable] of instance.namedTensors()) tf.tidy(() => variable.assign(tf.add(variable, tf.randomNormal(variable.shape, 0, 0.3, 'float32', seed++))));
    }
    const copy = adapterModel.modulesToSaveWrappers()[0]![1].copy('default')!;
    for (const [, variable] of copy.namedParameters()) tf.tidy(() => variable.assign(tf.add(variable, tf.randomNormal(variable.shape, 0, 0.1, 'float32', seed++))));
    adapterModel.model.eval();
    return adapterModel;
  }

  it('saves as peft_type DOUBLE_LORA with lora_A1/B1/A2/B2 keys and is read back by the registry', async () => {
    const adapterModel = create();
    const target = path.join(directory, 'double');
    await saveAdapter(adapterModel, target);
    const config = JSON.parse(await readFile(path.join(target, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    expect(config['peft_type']).toBe('DOUBLE_LORA');
    expect([config['r1'], config['lora_alpha1'], config['lora_dropout1'], config['r2'], config['lora_alpha2'], config['lora_dropout2']]).toEqual([4, 8, 0, 2, 1, 0.1]);
    expect(registry.adapterForPeftConfig(config as { peft_type: string }).name).toBe('double-lora');
    const file = await readSafetensorsFile(path.join(target, 'adapter_model.safetensors'));
    expect([...file.tensors.keys()].sort()).toEqual(
      [
        ...['query', 'conv'].flatMap((m) => ['lora_A1.weight', 'lora_B1.weight', 'lora_A2.weight', 'lora_B2.weight'].map((k) => `base_model.model.${m}.${k}`)),
        'base_model.model.head.weight',
        'base_model.model.head.bias',
      ].sort(),
    );
    adapterModel.dispose();
  });

  it('exports to a plain PEFT LoRA of rank r₁ + r₂ that gives the same outputs', async () => {
    const adapterModel = create();
    const x = tf.randomNormal([3, 4, 12], 0, 1, 'float32', 7);
    const expected = adapterModel.model.forward(x);
    const target = path.join(directory, 'exported');
    await withoutTensorLeaks(() => saveDoubleLoraAsLora(adapterModel, target));
    const config = JSON.parse(await readFile(path.join(target, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    expect([config['peft_type'], config['r'], config['lora_alpha'], config['use_dora'], config['lora_dropout']]).toEqual(['LORA', 6, 6, false, 0]);
    expect(config['target_modules']).toEqual(['query', 'conv']);
    expect(config['modules_to_save']).toEqual(['head']);
    const file = await readSafetensorsFile(path.join(target, 'adapter_model.safetensors'));
    expect(Object.fromEntries([...file.tensors].map(([key, entry]) => [key, entry.shape]))).toEqual({
      'base_model.model.query.lora_A.weight': [6, 12],
      'base_model.model.query.lora_B.weight': [10, 6],
      'base_model.model.conv.lora_A.weight': [6, 10],
      'base_model.model.conv.lora_B.weight': [12, 6],
      'base_model.model.head.weight': [5, 12],
      'base_model.model.head.bias': [5],
    });
    // Loaded by core's plain LoRA plugin, on a fresh copy of the base model.
    const plain = await loadAdapterModel(new Net(), target, { registry: createLoraRegistry({ plugins: [lora()] }) });
    expect((plain.adapterConfig('default').config as LoraConfig).r).toBe(6);
    plain.model.eval();
    const actual = plain.model.forward(x);
    const error = maxRelativeError(actual.dataSync(), expected.dataSync());
    console.log(`double-lora exported as LoRA rank 6: max rel output difference ${error.toExponential(2)}`);
    expect(error).toBeLessThan(1e-6);
    // The in-memory form gives the same tensors.
    const exported = exportDoubleLoraAsLora(adapterModel);
    expect([...exported.tensors.keys()].sort()).toEqual([...file.tensors.keys()].sort());
    tf.dispose([x, expected, actual, ...exported.tensors.values()]);
    plain.dispose();
    adapterModel.dispose();
  });

  it('trains its pairs at their own learning rates with one AdamW per pair', async () => {
    const adapterModel = create();
    adapterModel.model.train();
    const adapters = adapterModel.adapterInstances('default').map(([, instance]) => instance as DoubleLoraAdapter);
    const firstVariables = adapters.flatMap((adapter) => [adapter.first.loraA, adapter.first.loraB]);
    const secondVariables = adapters.flatMap((adapter) => [adapter.second.loraA, adapter.second.loraB]);
    const snapshot = (variables: tf.Variable[]) => variables.map((v) => Array.from(v.dataSync()));
    const [firstBefore, secondBefore] = [snapshot(firstVariables), snapshot(secondVariables)];
    const fast = new AdamW({ learningRate: 1e-2 });
    const frozen = new AdamW({ learningRate: 0 });
    const x = tf.randomNormal([8, 12], 0, 1, 'float32', 9);
    await withoutTensorLeaks(() => {
      for (let step = 0; step < 3; step++) {
        const { grads, value } = tf.variableGrads(() => tf.mean(tf.square(adapterModel.model.forward(x))) as tf.Scalar, [...firstVariables, ...secondVariables]);
        fast.applyGradients(new Map(firstVariables.map((v) => [v, grads[v.name]!])));
        frozen.applyGradients(new Map(secondVariables.map((v) => [v, grads[v.name]!])));
        tf.dispose([value, ...Object.values(grads)]);
      }
      fast.dispose();
      frozen.dispose();
    });
    expect(snapshot(firstVariables)).not.toEqual(firstBefore);
    expect(snapshot(secondVariables)).toEqual(secondBefore);
    x.dispose();
    adapterModel.dispose();
  });

  it('writes nothing and names the tensor when a weight is NaN', async () => {
    const adapterModel = create();
    const adapter = adapterModel.adapterInstances('default')[0]![1] as DoubleLoraAdapter;
    tf.tidy(() => adapter.second.loraB.assign(tf.fill(adapter.second.loraB.shape, Number.NaN)));
    const target = path.join(directory, 'not-finite');
    await withoutTensorLeaks(() =>
      expect(saveDoubleLoraAsLora(adapterModel, target)).rejects.toThrow(/^\[@lora\/dora\] Not exporting to .*: base_model\.model\.query\.lora_B\.weight holds NaN or Infinity/u),
    );
    await expect(readFile(path.join(target, 'adapter_model.safetensors'))).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(readFile(path.join(target, 'adapter_config.json'))).rejects.toMatchObject({ code: 'ENOENT' });
    adapterModel.dispose();
  });

  it('refuses to export an adapter that is not double-lora', () => {
    const adapterModel = AdapterModel.create(new Net(), { registry, plugin: 'dora', config: { r: 2, targetModules: ['query'] } });
    expect(() => exportDoubleLoraAsLora(adapterModel)).toThrow(LoraError);
    adapterModel.dispose();
  });
});
