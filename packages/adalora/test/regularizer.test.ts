import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, createLoraRegistry, initRuntime } from '@lora/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { AdaLoraAdapter, adalora, isAdaLoraAdapter, orthogonalRegularization } from '../src/index.js';
import { float32, maxRelativeDifference, randomValues, SmallNet } from './helpers.js';

/** Row-major float64 helpers. */
function gram(m: readonly number[], rows: number, cols: number, transposeFirst: boolean): number[] {
  // transposeFirst: Mᵀ·M ([cols, cols]); else M·Mᵀ ([rows, rows]).
  const n = transposeFirst ? cols : rows;
  const out = new Array<number>(n * n).fill(0);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
    let sum = 0;
    if (transposeFirst) for (let k = 0; k < rows; k++) sum += m[k * cols + i]! * m[k * cols + j]!;
    else for (let k = 0; k < cols; k++) sum += m[i * cols + k]! * m[j * cols + k]!;
    out[i * n + j] = sum;
  }
  return out;
}

function residualSquares(g: readonly number[], n: number): number {
  let sum = 0;
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) sum += (g[i * n + j]! - (i === j ? 1 : 0)) ** 2;
  return sum;
}

describe('orthogonalRegularization', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  const shapes = [
    { inFeatures: 7, outFeatures: 5, pattern: undefined },
    { inFeatures: 6, outFeatures: 9, pattern: undefined },
    { inFeatures: 64, outFeatures: 192, pattern: [false, false, false, false] }, // rank 0, as the fixture's h.1.attn.c_attn
  ];

  function build(): { adapters: AdaLoraAdapter[]; values: { A: number[]; B: number[]; rows: number; in: number; out: number }[] } {
    const adapters = shapes.map((s) => new AdaLoraAdapter({ inFeatures: s.inFeatures, outFeatures: s.outFeatures, initR: 4, loraAlpha: 8, rankPattern: s.pattern }));
    const values = adapters.map((adapter, i) => {
      const A = float32(randomValues(adapter.rows * adapter.inFeatures, 40 + i, 0.6));
      const B = float32(randomValues(adapter.outFeatures * adapter.rows, 50 + i, 0.6));
      tf.tidy(() => {
        adapter.loraA.assign(tf.tensor2d(A, [adapter.rows, adapter.inFeatures]));
        adapter.loraB.assign(tf.tensor2d(B, [adapter.outFeatures, adapter.rows]));
      });
      return { A, B, rows: adapter.rows, in: adapter.inFeatures, out: adapter.outFeatures };
    });
    return { adapters, values };
  }

  it("matches PEFT's unsquared, averaged form (rank-0 modules counted in N) and the paper's squared sum in float64", () => {
    const { adapters, values } = build();
    let peft = 0;
    let paper = 0;
    for (const v of values) {
      if (v.rows === 0) continue;
      const a = residualSquares(gram(v.A, v.rows, v.in, false), v.rows);
      const b = residualSquares(gram(v.B, v.out, v.rows, true), v.rows);
      peft += Math.sqrt(a) + Math.sqrt(b);
      paper += a + b;
    }
    const expectedPeft = (0.5 * peft) / 6; // N = 6: every A and B, the rank-0 module's included
    const expectedPaper = 0.3 * paper;
    const ours = orthogonalRegularization(adapters, { weight: 0.5 })!;
    const oursPaper = orthogonalRegularization(adapters, { weight: 0.3, form: 'paper' })!;
    const errorPeft = Math.abs(ours.dataSync()[0]! - expectedPeft) / expectedPeft;
    const errorPaper = Math.abs(oursPaper.dataSync()[0]! - expectedPaper) / expectedPaper;
    console.log(`orthogonal regulariser vs float64: rel err peft ${errorPeft.toExponential(2)}, paper ${errorPaper.toExponential(2)}`);
    expect(errorPeft).toBeLessThan(1e-6);
    expect(errorPaper).toBeLessThan(1e-6);
    expect(orthogonalRegularization(adapters, { weight: 0 })).toBeNull();
    tf.dispose([ours, oursPaper]);
    adapters.forEach((a) => a.dispose());
  });

  it('has the gradient of the float64 formula: (w/N)·2(AAᵀ − I)A/‖AAᵀ − I‖', () => {
    const { adapters, values } = build();
    const v = values[0]!;
    const { grads, value } = tf.variableGrads(() => orthogonalRegularization(adapters, { weight: 0.5 })!, [adapters[0]!.loraA]);
    const g = gram(v.A, v.rows, v.in, false);
    const norm = Math.sqrt(residualSquares(g, v.rows));
    const expected = new Array<number>(v.rows * v.in).fill(0);
    for (let i = 0; i < v.rows; i++) for (let k = 0; k < v.in; k++) {
      let sum = 0;
      for (let j = 0; j < v.rows; j++) sum += (g[i * v.rows + j]! - (i === j ? 1 : 0)) * v.A[j * v.in + k]!;
      expected[i * v.in + k] = ((0.5 / 6) * 2 * sum) / norm;
    }
    const error = maxRelativeDifference(grads[adapters[0]!.loraA.name]!.dataSync(), expected);
    console.log(`orthogonal regulariser gradient vs float64: max rel err ${error.toExponential(2)}`);
    expect(error).toBeLessThan(1e-5);
    tf.dispose([value, ...Object.values(grads)]);
    adapters.forEach((a) => a.dispose());
  });

  it("is the plugin's extraLoss hook, and a frozen adapter adds no hooks", () => {
    const registry = createLoraRegistry({ plugins: [adalora({ seed: 1 })] });
    const peft = AdapterModel.create(new SmallNet(), { registry, plugin: 'adalora', config: { initR: 3, targetR: 1, totalStep: 5, targetModules: ['fc1', 'fc2'] } });
    const [hooks] = peft.trainingHooks();
    const fromHook = hooks!.extraLoss!({ step: 0 })!;
    const adapters = peft.adapterInstances('default').map(([, a]) => a).filter(isAdaLoraAdapter);
    const direct = orthogonalRegularization(adapters, { weight: 0.5 })!;
    expect(fromHook.dataSync()[0]).toBeCloseTo(direct.dataSync()[0]!, 6);
    tf.dispose([fromHook, direct]);
    peft.addAdapter('frozen', { plugin: 'adalora', config: { initR: 3, inferenceMode: true, targetModules: ['fc3'] } });
    peft.setAdapter('frozen');
    expect(peft.trainingHooks()).toEqual([{}]);
    peft.dispose();
  });
});
