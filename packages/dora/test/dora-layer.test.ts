import * as tf from '@tensorflow/tfjs-core';
import { initRuntime, LoraError, type AdapterLayer, type Linear } from '@lora/core';
import { LORA_LINEAR_BACKWARD_KERNEL, LORA_LINEAR_FORWARD_KERNEL, spyOnKernels } from '@lora/core/internal';
import { applyContextFor, layerGradients, runSuiteOnBackend, withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { DoraAdapter } from '../src/index.js';
import {
  doraApply64,
  doraNorm64,
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
  type DoraParameters,
} from './helpers.js';

const IN = 6;
const OUT = 5;
const R = 3;
const ROWS = 4;
const ALPHA = 6; // s = 2

const W = randomValues(OUT * IN, 1, 0.6);
const BIAS = randomValues(OUT, 2, 0.3);
const X = randomValues(ROWS * IN, 3, 1);
/** The loss weights: L = Σ y ⊙ RW. */
const LOSS_WEIGHTS = randomValues(ROWS * OUT, 4, 1);

function parameters(seed: number, r = R, alpha = ALPHA): DoraParameters {
  return {
    A: randomValues(r * IN, seed, 0.5),
    B: randomValues(OUT * r, seed + 1, 0.4),
    // Not the norm of W: as in the PEFT fixture, m was trained away from its initial value.
    m: randomValues(OUT, seed + 2, 0.3).map((v) => Math.fround(1 + v)),
    s: alpha / r,
    r,
  };
}

function build(options: { fanInFanOut: boolean; bias: boolean; p: DoraParameters; dropout?: number }): { linear: Linear; adapter: DoraAdapter } {
  const linear = makeLinear({ W, bias: options.bias ? BIAS : null, inF: IN, out: OUT, fanInFanOut: options.fanInFanOut });
  const adapter = new DoraAdapter({ base: linear, r: options.p.r, alpha: options.p.s * options.p.r, dropout: options.dropout });
  setAdapterTensors(adapter, { 'lora_A.weight': options.p.A, 'lora_B.weight': options.p.B, lora_magnitude_vector: options.p.m });
  return { linear, adapter };
}

const layouts = [
  { name: 'Linear [out, in] with bias', fanInFanOut: false, bias: true },
  { name: 'Conv1D [in, out] with bias', fanInFanOut: true, bias: true },
  { name: 'Linear without bias', fanInFanOut: false, bias: false },
];

describe('DoraAdapter', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it('initialises the magnitude to the row norms of W (B = 0) and saves PEFT key names and shapes', async () => {
    await withoutTensorLeaks(() => {
      for (const fanInFanOut of [false, true]) {
        const linear = makeLinear({ W, bias: BIAS, inF: IN, out: OUT, fanInFanOut });
        const adapter = new DoraAdapter({ base: linear, r: R, alpha: ALPHA, seed: 5 });
        const names = adapter.namedTensors().map(([key, variable]) => [key, variable.shape]);
        expect(names).toEqual([
          ['lora_A.weight', [R, IN]],
          ['lora_B.weight', [OUT, R]],
          ['lora_magnitude_vector', [OUT]],
        ]);
        const expected = doraNorm64(W, { A: new Array<number>(R * IN).fill(0), B: new Array<number>(OUT * R).fill(0), m: [], s: 2, r: R }, OUT, IN);
        expect(maxRelativeError(adapter.magnitude.dataSync(), expected)).toBeLessThan(1e-6);
        // A kaiming-uniform(a=√5): |A| <= 1/√in; B zeros.
        expect(Math.max(...Array.from(adapter.loraA.dataSync()).map(Math.abs))).toBeLessThanOrEqual(1 / Math.sqrt(IN));
        expect(Array.from(adapter.loraB.dataSync()).every((v) => v === 0)).toBe(true);
        adapter.dispose();
        linear.dispose();
      }
    });
  });

  it('refuses a layer with an all-zero output row, whose magnitude scaling would be 0/0, leaking nothing', async () => {
    const zeroRow = W.map((value, i) => (Math.floor(i / IN) === 3 ? 0 : value));
    const linear = makeLinear({ W: zeroRow, bias: BIAS, inF: IN, out: OUT });
    await withoutTensorLeaks(() => {
      expect(() => new DoraAdapter({ base: linear, r: R, alpha: ALPHA, seed: 5, modulePath: 'h.0.fc1' })).toThrow(
        "[dora] Cannot adapt h.0.fc1: row 3 of its weight (output feature 3) is all zeros, so DoRA's magnitude ‖W + ΔW‖ is 0 there and its output 0/0 = NaN. Leave the layer out of targetModules, or adapt it with LoRA.",
      );
    });
    linear.dispose();
  });

  it('initialises the magnitude to ‖W + s·B·A‖ when B starts non-zero (initLoraWeights false)', async () => {
    await withoutTensorLeaks(() => {
      const linear = makeLinear({ W, bias: BIAS, inF: IN, out: OUT });
      const adapter = new DoraAdapter({ base: linear, r: R, alpha: ALPHA, init: false, seed: 9 });
      const p: DoraParameters = { A: Array.from(adapter.loraA.dataSync()), B: Array.from(adapter.loraB.dataSync()), m: [], s: 2, r: R };
      expect(maxRelativeError(adapter.magnitude.dataSync(), doraNorm64(W, p, OUT, IN))).toBeLessThan(1e-6);
      adapter.dispose();
      linear.dispose();
    });
  });

  // WASM computes a single adapter's layer through applyWithBase (core's fused LoRA kernels); the
  // plain-JS backend has no such kernels, so there the base runs and then apply(): both forms meet
  // the same float64 references.
  describe.each(['wasm', 'cpu'].flatMap((backend) => layouts.map((layout) => ({ ...layout, backend }))))('on a $name ($backend backend)', ({ fanInFanOut, bias, backend }) => {
    const p = parameters(10);
    const b = bias ? BIAS : null;

    runSuiteOnBackend(backend);

    it('takes one fused kernel each way on WASM, equal to apply()’s composed form, and declines on the plain-JS backend', async () => {
      await withoutTensorLeaks(() => {
        const { linear, adapter } = build({ fanInFanOut, bias, p });
        const layer = wrap(linear, { default: adapter });
        layer.train();
        // More rows than token-by-token generation takes, as in training.
        const rows = 40;
        const x = tf.tensor2d(randomValues(rows * IN, 60, 1), [rows, IN]);
        const weights = tf.tensor2d(randomValues(rows * OUT, 61, 1), [rows, OUT]);
        const context = applyContextFor(linear, { training: true });
        const spy = spyOnKernels();
        const whole = adapter.applyWithBase(x, context);
        spy.stop();
        if (backend === 'cpu') {
          expect(whole).toBeNull();
        } else {
          const names = spy.calls.filter((call) => call.depth === 0).map((call) => call.kernelName);
          expect(names.filter((name) => name === LORA_LINEAR_FORWARD_KERNEL)).toHaveLength(1);
          expect(names).not.toContain('Sub');
          // The layer output and every gradient (A, B, m, x and a trainable bias) against apply()
          // after the base layer; a frozen bias (as in LoRA training) gets none.
          for (const biasTrainable of bias ? [true, false] : [false]) {
            if (linear.bias) linear.bias.trainable = biasTrainable;
            const variables = [adapter.loraA, adapter.loraB, adapter.magnitude, ...(biasTrainable ? [linear.bias!] : [])];
            const gradientsOf = (forward: (input: tf.Tensor) => tf.Tensor): tf.Tensor[] => layerGradients(forward, x, weights, variables);
            const backward = spyOnKernels();
            const fused = gradientsOf((input) => adapter.applyWithBase(input, context)!);
            backward.stop();
            expect(backward.calls.filter((call) => call.kernelName === LORA_LINEAR_BACKWARD_KERNEL).length).toBeGreaterThan(0);
            const composed = gradientsOf((input) => adapter.apply(input, linear.forward(input), context));
            const reference = tf.tidy(() => adapter.apply(x, linear.forward(x), context));
            const expected = [reference, ...composed];
            const errors = [whole!, ...fused].map((tensor, index) => maxRelativeError(tensor.dataSync(), expected[index]!.dataSync()));
            console.log(
              `DoRA fused vs composed (fanInFanOut ${fanInFanOut}, bias ${bias}, trainable bias ${biasTrainable}): output, dA, dB, dm${biasTrainable ? ', db' : ''}, dx max rel ${errors.map((e) => e.toExponential(2)).join(', ')}`,
            );
            expect(errors).toHaveLength(variables.length + 2);
            for (const error of errors) expect(error).toBeLessThan(1e-5);
            tf.dispose([...fused, ...composed, reference]);
          }
          whole!.dispose();
        }
        tf.dispose([x, weights]);
        layer.dispose();
      });
    });

    it('computes PEFT’s forward: result + (g − 1)·(result − bias) + g·s·B·A·x', async () => {
      await withoutTensorLeaks(() => {
        const { linear, adapter } = build({ fanInFanOut, bias, p });
        const layer = wrap(linear, { default: adapter });
        const x = tf.tensor2d(X, [ROWS, IN]);
        const y = layer.forward(x);
        const expected = doraApply64({ x: X, rows: ROWS, inF: IN, out: OUT, result: linear64(X, W, b, ROWS, IN, OUT), bias: b, W, p });
        const error = maxRelativeError(y.dataSync(), expected);
        console.log(`DoRA forward (fanInFanOut ${fanInFanOut}, bias ${bias}): max rel error vs float64 ${error.toExponential(2)}`);
        expect(error).toBeLessThan(1e-6);
        // Equivalently the paper's W' = m ⊙ (W + sBA)/‖W + sBA‖ with the bias outside.
        const n = doraNorm64(W, p, OUT, IN);
        const BA = matmul64(p.B, p.A, OUT, R, IN);
        const merged = W.map((w, index) => (p.m[Math.floor(index / IN)]! / n[Math.floor(index / IN)]!) * (w + p.s * BA[index]!));
        expect(maxRelativeError(y.dataSync(), linear64(X, merged, b, ROWS, IN, OUT))).toBeLessThan(1e-6);
        // A 3-D input [batch, seq, in] gives the same rows.
        const x3 = tf.reshape(x, [2, 2, IN]);
        const y3 = layer.forward(x3);
        expect(y3.shape).toEqual([2, 2, OUT]);
        expect(maxAbsoluteError(y3.dataSync(), y.dataSync())).toBe(0);
        tf.dispose([x, y, x3, y3]);
        layer.dispose();
      });
    });

    it('gives gradients for A, B and m equal to the float64 ones with the norm treated as a constant', async () => {
      await withoutTensorLeaks(() => {
        const { linear, adapter } = build({ fanInFanOut, bias, p });
        const layer = wrap(linear, { default: adapter });
        const x = tf.tensor2d(X, [ROWS, IN]);
        const weights = tf.tensor2d(LOSS_WEIGHTS, [ROWS, OUT]);
        const { grads, value } = tf.variableGrads(() => tf.sum(tf.mul(layer.forward(x), weights)) as tf.Scalar, [
          adapter.loraA,
          adapter.loraB,
          adapter.magnitude,
        ]);
        // Reference: y = g ⊙ (x·(W + sBA)ᵀ) + b with g = m/n and n constant.
        const n = doraNorm64(W, p, OUT, IN);
        const BA = matmul64(p.B, p.A, OUT, R, IN);
        const C = W.map((w, index) => w + p.s * BA[index]!);
        const xC = matmul64(X, transpose64(C, OUT, IN), ROWS, IN, OUT);
        const dm = p.m.map((_, j) => {
          let sum = 0;
          for (let k = 0; k < ROWS; k++) sum += LOSS_WEIGHTS[k * OUT + j]! * xC[k * OUT + j]!;
          return sum / n[j]!;
        });
        const G = LOSS_WEIGHTS.map((value, index) => value * (p.m[index % OUT]! / n[index % OUT]!));
        const xA = matmul64(X, transpose64(p.A, R, IN), ROWS, IN, R);
        const dB = matmul64(transpose64(G, ROWS, OUT), xA, OUT, ROWS, R).map((v) => v * p.s);
        const GB = matmul64(G, p.B, ROWS, OUT, R);
        const dA = matmul64(transpose64(GB, ROWS, R), X, R, ROWS, IN).map((v) => v * p.s);
        const errors = {
          A: maxRelativeError(grads[adapter.loraA.name]!.dataSync(), dA),
          B: maxRelativeError(grads[adapter.loraB.name]!.dataSync(), dB),
          m: maxRelativeError(grads[adapter.magnitude.name]!.dataSync(), dm),
        };
        console.log(`DoRA gradients (fanInFanOut ${fanInFanOut}, bias ${bias}): max rel error vs float64 (norm constant) ${JSON.stringify(errors)}`);
        expect(errors.A).toBeLessThan(1e-5);
        expect(errors.B).toBeLessThan(1e-5);
        expect(errors.m).toBeLessThan(1e-5);

        // The reference's analytic gradient is itself checked by central differences in float64
        // of the loss with the norm frozen at n (linear in each of A, B, m, so differences are exact).
        const loss64 = (q: DoraParameters, norm?: readonly number[]): number => {
          const y = doraApply64({ x: X, rows: ROWS, inF: IN, out: OUT, result: linear64(X, W, b, ROWS, IN, OUT), bias: b, W, p: q, norm });
          return y.reduce((sum, v, index) => sum + v * LOSS_WEIGHTS[index]!, 0);
        };
        const finiteDifference = (field: 'A' | 'B' | 'm', index: number, frozen: boolean): number => {
          const h = 1e-4;
          const shifted = (delta: number): DoraParameters => ({ ...p, [field]: p[field].map((v, i) => (i === index ? v + delta : v)) });
          return (loss64(shifted(h), frozen ? n : undefined) - loss64(shifted(-h), frozen ? n : undefined)) / (2 * h);
        };
        let worstFrozen = 0;
        let largestUndetachedGap = 0;
        for (const [field, analytic] of [['A', dA], ['B', dB], ['m', dm]] as const) {
          for (let index = 0; index < analytic.length; index++) {
            worstFrozen = Math.max(worstFrozen, Math.abs(finiteDifference(field, index, true) - analytic[index]!));
            if (field !== 'm') largestUndetachedGap = Math.max(largestUndetachedGap, Math.abs(finiteDifference(field, index, false) - analytic[index]!));
          }
        }
        console.log(`  float64 finite differences (norm frozen) vs analytic: max abs ${worstFrozen.toExponential(2)}; undetached gradient differs by up to ${largestUndetachedGap.toExponential(2)}`);
        expect(worstFrozen).toBeLessThan(1e-8);
        // Detaching matters: the gradient through the norm is not zero here, and we leave it out.
        expect(largestUndetachedGap).toBeGreaterThan(1e-3);
        tf.dispose([x, weights, value, ...Object.values(grads)]);
        layer.dispose();
      });
    });

    it('passes float32 finite-difference checks: m on the real forward, A and B with the norm frozen', async () => {
      await withoutTensorLeaks(() => {
        const { linear, adapter } = build({ fanInFanOut, bias, p });
        const layer = wrap(linear, { default: adapter });
        const x = tf.tensor2d(X, [ROWS, IN]);
        const weights = tf.tensor2d(LOSS_WEIGHTS, [ROWS, OUT]);
        const loss = (): tf.Scalar => tf.sum(tf.mul(layer.forward(x), weights)) as tf.Scalar;
        const lossValue = (): number => tf.tidy(() => loss().dataSync()[0]!);
        const variables = [adapter.loraA, adapter.loraB, adapter.magnitude];
        const { grads, value } = tf.variableGrads(loss, variables);
        const frozenNorm = adapter.weightNorm(linear);
        const check = (variable: tf.Variable): number => {
          const base = Array.from(variable.dataSync());
          const analytic = grads[variable.name]!.dataSync();
          // The loss is linear in each variable once the norm is fixed, so a large step has no
          // truncation error and little float32 cancellation.
          const h = 0.25;
          let worst = 0;
          for (let index = 0; index < base.length; index++) {
            const at = (delta: number): number => {
              tf.tidy(() => variable.assign(tf.tensor(base.map((v, i) => (i === index ? v + delta : v)), variable.shape)));
              return lossValue();
            };
            const numeric = (at(h) - at(-h)) / (2 * h);
            worst = Math.max(worst, Math.abs(numeric - analytic[index]!) / Math.max(1, Math.abs(analytic[index]!)));
          }
          tf.tidy(() => variable.assign(tf.tensor(base, variable.shape)));
          return worst;
        };
        const mError = check(adapter.magnitude);
        // Freeze the norm at its current value (what the detached gradient assumes) for A and B:
        // both ways it is computed (the composed form's weightNorm, the fused path's combinedNorm).
        const patched = adapter as unknown as Record<'weightNorm' | 'combinedNorm', () => tf.Tensor1D>;
        patched.weightNorm = patched.combinedNorm = () => tf.clone(frozenNorm);
        const aError = check(adapter.loraA);
        const bError = check(adapter.loraB);
        // The class's own methods again.
        for (const name of ['weightNorm', 'combinedNorm']) Reflect.deleteProperty(patched, name);
        console.log(`DoRA float32 finite differences (fanInFanOut ${fanInFanOut}, bias ${bias}): m ${mError.toExponential(2)}, A ${aError.toExponential(2)}, B ${bError.toExponential(2)}`);
        expect(mError).toBeLessThan(1e-4);
        expect(aError).toBeLessThan(1e-4);
        expect(bError).toBeLessThan(1e-4);
        tf.dispose([x, weights, value, frozenNorm, ...Object.values(grads)]);
        layer.dispose();
      });
    });

    it('merges to W′ = (m/n)·(W + s·B·A), gives the merged forward ≡ unmerged, and unmerge restores W within 3 ulp', async () => {
      await withoutTensorLeaks(() => {
        const { linear, adapter } = build({ fanInFanOut, bias, p });
        const layer = wrap(linear, { default: adapter });
        const x = tf.tensor2d(X, [ROWS, IN]);
        const unmerged = layer.forward(x);
        const delta = adapter.deltaWeight(linear);
        layer.merge();
        expect(layer.mergedAdapters).toEqual(['default']);
        const mergedWeight = linear.denseWeight();
        const n = doraNorm64(W, p, OUT, IN);
        const BA = matmul64(p.B, p.A, OUT, R, IN);
        const expectedMerged = W.map((w, index) => (p.m[Math.floor(index / IN)]! / n[Math.floor(index / IN)]!) * (w + p.s * BA[index]!));
        const mergeError = maxRelativeError(mergedWeight.dataSync(), expectedMerged);
        const deltaError = maxRelativeError(delta.dataSync(), expectedMerged.map((v, index) => v - W[index]!));
        const merged = layer.forward(x);
        const equivalence = maxRelativeError(merged.dataSync(), unmerged.dataSync());
        layer.unmerge();
        const restoredWeight = linear.denseWeight();
        const restored = restoredWeight.dataSync();
        // Unmerge divides by the cached m/n and subtracts s·B·A, as PEFT; it cannot be bit-exact.
        // Stated tolerance: 3 ulp of max(|W|, |W + s·B·A|) per element. Each of the four roundings
        // (W + ΔW, ·f, /f, − ΔW) is at most half an ulp of a value of that size; the two products
        // can each cost up to one ulp when they cross a power of two.
        let worstUlps = 0;
        for (let index = 0; index < W.length; index++) {
          const scale = Math.max(Math.abs(W[index]!), Math.abs(W[index]! + p.s * BA[index]!));
          worstUlps = Math.max(worstUlps, Math.abs(restored[index]! - W[index]!) / ulp32(scale));
        }
        console.log(
          `DoRA merge (fanInFanOut ${fanInFanOut}): merged W rel err ${mergeError.toExponential(2)}, ΔW rel err ${deltaError.toExponential(2)}, merged vs unmerged forward rel ${equivalence.toExponential(2)}, unmerge max ${worstUlps} ulp`,
        );
        expect(mergeError).toBeLessThan(1e-6);
        expect(deltaError).toBeLessThan(1e-5);
        expect(equivalence).toBeLessThan(1e-5);
        expect(worstUlps).toBeLessThanOrEqual(3);
        const again = layer.forward(x);
        expect(maxRelativeError(again.dataSync(), unmerged.dataSync())).toBeLessThan(1e-5);
        tf.dispose([x, unmerged, delta, mergedWeight, merged, again, restoredWeight]);
        layer.dispose();
      });
    });
  });

  it('recomputes the base product on the dropped-out input in training mode with dropout (PEFT’s dropout path)', async () => {
    await withoutTensorLeaks(() => {
      const inF = 3;
      const rows = 24;
      const w = W.slice(0, OUT * inF);
      const x = randomValues(rows * inF, 30, 1);
      const p: DoraParameters = { A: randomValues(R * inF, 31, 0.5), B: randomValues(OUT * R, 32, 0.4), m: randomValues(OUT, 33, 0.3).map((v) => Math.fround(1 + v)), s: 2, r: R };
      const linear = makeLinear({ W: w, bias: BIAS, inF, out: OUT });
      const adapter = new DoraAdapter({ base: linear, r: R, alpha: 2 * R, dropout: 0.5 });
      setAdapterTensors(adapter, { 'lora_A.weight': p.A, 'lora_B.weight': p.B, lora_magnitude_vector: p.m });
      const layer = wrap(linear, { default: adapter });
      layer.train();
      const input = tf.tensor2d(x, [rows, inF]);
      const trained = layer.forward(input);
      const y = trained.dataSync();
      const n = doraNorm64(w, p, OUT, inF);
      const evalOutput = doraApply64({ x, rows, inF, out: OUT, result: linear64(x, w, BIAS, rows, inF, OUT), bias: BIAS, W: w, p });
      // Every row must be x·Wᵀ + b + (g − 1)·(x_d·Wᵀ) + g·s·B·A·x_d for one of the 2³ dropout masks.
      let matched = 0;
      let differsFromEval = 0;
      for (let k = 0; k < rows; k++) {
        const row = x.slice(k * inF, (k + 1) * inF);
        const outputRow = Array.from(y.slice(k * OUT, (k + 1) * OUT));
        let found = false;
        for (let mask = 0; mask < 2 ** inF && !found; mask++) {
          const dropped = row.map((v, i) => ((mask >> i) & 1 ? v * 2 : 0));
          const candidate = linear64(row, w, BIAS, 1, inF, OUT);
          const baseDropped = linear64(dropped, w, null, 1, inF, OUT);
          const lora = matmul64(matmul64(dropped, transpose64(p.A, R, inF), 1, inF, R), transpose64(p.B, OUT, R), 1, R, OUT);
          const expected = candidate.map((v, j) => v + (p.m[j]! / n[j]! - 1) * baseDropped[j]! + (p.m[j]! / n[j]!) * p.s * lora[j]!);
          found = maxAbsoluteError(outputRow, expected) < 1e-5;
        }
        if (found) matched += 1;
        if (maxAbsoluteError(outputRow, evalOutput.slice(k * OUT, (k + 1) * OUT)) > 1e-4) differsFromEval += 1;
      }
      expect(matched).toBe(rows);
      expect(differsFromEval).toBeGreaterThan(0);
      // Gradients are finite through dropout.
      const { grads, value } = tf.variableGrads(() => tf.sum(layer.forward(input)) as tf.Scalar, [adapter.loraA, adapter.loraB, adapter.magnitude]);
      for (const gradient of Object.values(grads)) expect(Array.from(gradient.dataSync()).every(Number.isFinite)).toBe(true);
      // Eval mode ignores dropout and reuses result − bias.
      layer.eval();
      const evaluated = layer.forward(input);
      expect(maxRelativeError(evaluated.dataSync(), evalOutput)).toBeLessThan(1e-6);
      tf.dispose([input, trained, value, evaluated, ...Object.values(grads)]);
      layer.dispose();
    });
  });

  it('stacks several adapters as PEFT does, switches between them, and unmerges them last-merged first', async () => {
    await withoutTensorLeaks(() => {
      const p1 = parameters(40);
      const p2 = parameters(50, 2, 4);
      const linear = makeLinear({ W, bias: BIAS, inF: IN, out: OUT });
      const first = new DoraAdapter({ base: linear, r: p1.r, alpha: p1.s * p1.r });
      const second = new DoraAdapter({ base: linear, r: p2.r, alpha: p2.s * p2.r });
      setAdapterTensors(first, { 'lora_A.weight': p1.A, 'lora_B.weight': p1.B, lora_magnitude_vector: p1.m });
      setAdapterTensors(second, { 'lora_A.weight': p2.A, 'lora_B.weight': p2.B, lora_magnitude_vector: p2.m });
      const layer = wrap(linear, { first, second });
      const x = tf.tensor2d(X, [ROWS, IN]);
      const base = linear64(X, W, BIAS, ROWS, IN, OUT);
      const y1 = doraApply64({ x: X, rows: ROWS, inF: IN, out: OUT, result: base, bias: BIAS, W, p: p1 });
      // PEFT feeds the output so far (with the first adapter's contribution) to the second adapter's base term.
      const y12 = doraApply64({ x: X, rows: ROWS, inF: IN, out: OUT, result: y1, bias: BIAS, W, p: p2 });
      const both = layer.forward(x);
      expect(maxRelativeError(both.dataSync(), y12)).toBeLessThan(1e-6);
      layer.setActiveAdapters(['second']);
      const onlySecond = layer.forward(x);
      expect(maxRelativeError(onlySecond.dataSync(), doraApply64({ x: X, rows: ROWS, inF: IN, out: OUT, result: base, bias: BIAS, W, p: p2 }))).toBeLessThan(1e-6);
      layer.merge({ adapterNames: ['first', 'second'] });
      expect(layer.mergedAdapters).toEqual(['first', 'second']);
      layer.unmerge();
      const restored = linear.denseWeight();
      expect(maxRelativeError(restored.dataSync(), W)).toBeLessThan(1e-6);
      expect(() => second.unmergeWeight(restored)).toThrow(LoraError);
      tf.dispose([x, both, onlySecond, restored]);
      layer.dispose();
    });
  });

  it('frees its variables and the cached merge norm on dispose', async () => {
    const linear = makeLinear({ W, bias: BIAS, inF: IN, out: OUT });
    const before = tf.memory().numTensors;
    const adapter = new DoraAdapter({ base: linear, r: R, alpha: ALPHA });
    const layer: AdapterLayer = wrap(linear, { default: adapter });
    layer.merge();
    layer.dispose();
    expect(tf.memory().numTensors).toBe(before - 2); // the linear's weight and bias went with the layer
  });
});
