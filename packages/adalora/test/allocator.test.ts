import * as tf from '@tensorflow/tfjs-core';
import { initRuntime } from '@lora/core';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { AdaLoraAdapter, budgetSchedule, parseAdaLoraConfig, RankAllocator } from '../src/index.js';
import { ADALORA_FIXTURE, float32, maxRelativeDifference, randomValues, readJson } from './helpers.js';

// ---- An independent float64 re-implementation of PEFT's RankAllocator (adalora/layer.py) ----

interface Module64 {
  rows: number;
  inFeatures: number;
  outFeatures: number;
  /** Row-major A [r, in], E [r], B [out, r]. */
  A: number[];
  E: number[];
  B: number[];
}
type Factor = 'A' | 'E' | 'B';
interface Ema {
  ipt: number[];
  unc: number[];
}

class PeftAllocator64 {
  readonly state = new Map<string, Ema>();
  rankPattern: boolean[][] | null = null;
  readonly initBudget: number;
  readonly targetBudget: number;

  constructor(
    readonly modules: Module64[],
    readonly c: { beta1: number; beta2: number; tinit: number; tfinal: number; totalStep: number; deltaT: number; targetR: number },
  ) {
    this.initBudget = modules.reduce((s, m) => s + m.rows, 0);
    this.targetBudget = c.targetR * modules.length;
  }

  schedule(step: number): { budget: number; mask: boolean } {
    const { tinit, tfinal, totalStep, deltaT } = this.c;
    if (step <= tinit) return { budget: this.initBudget, mask: false };
    if (step > totalStep - tfinal) return { budget: this.targetBudget, mask: true };
    const mul = 1 - (step - tinit) / (totalStep - tfinal - tinit);
    return { budget: Math.trunc((this.initBudget - this.targetBudget) * mul ** 3 + this.targetBudget), mask: step % deltaT === 0 };
  }

  updateIpt(grads: Record<Factor, number[]>[]): void {
    this.modules.forEach((m, i) => {
      for (const f of ['A', 'E', 'B'] as const) {
        const key = `${i}.${f}`;
        const p = m[f];
        const g = grads[i]![f];
        const old = this.state.get(key) ?? { ipt: p.map(() => 0), unc: p.map(() => 0) };
        const ipt = p.map((v, j) => Math.abs(v * g[j]!));
        const avg = ipt.map((v, j) => this.c.beta1 * old.ipt[j]! + (1 - this.c.beta1) * v);
        const unc = ipt.map((v, j) => this.c.beta2 * old.unc[j]! + (1 - this.c.beta2) * Math.abs(v - avg[j]!));
        this.state.set(key, { ipt: avg, unc });
      }
    });
  }

  scores(): number[][] {
    return this.modules.map((m, i) => {
      const s = (f: Factor): number[] => {
        const st = this.state.get(`${i}.${f}`)!;
        return st.ipt.map((v, j) => v * st.unc[j]!);
      };
      const sA = s('A');
      const sB = s('B');
      const sE = s('E');
      return Array.from({ length: m.rows }, (_, r) => {
        let a = 0;
        for (let j = 0; j < m.inFeatures; j++) a += sA[r * m.inFeatures + j]!;
        let b = 0;
        for (let k = 0; k < m.outFeatures; k++) b += sB[k * m.rows + r]!;
        return sE[r]! + (a / m.inFeatures + b / m.outFeatures);
      });
    });
  }

  maskToBudget(budget: number): { pattern: boolean[][]; threshold: number; gap: number } {
    const scores = this.scores();
    const all = scores.flat().sort((x, y) => x - y);
    const k = this.initBudget - budget;
    const threshold = all[k - 1]!;
    const gap = Math.min(Math.abs(threshold - (all[k] ?? Infinity)), Math.abs(threshold - (all[k - 2] ?? -Infinity)));
    const pattern = scores.map((row) => row.map((s) => !(s <= threshold)));
    this.modules.forEach((m, i) => pattern[i]!.forEach((keep, r) => !keep && (m.E[r] = 0)));
    return { pattern, threshold, gap };
  }

  updateAndAllocate(step: number, grads: Record<Factor, number[]>[]): { budget: number; pattern: boolean[][] | null; gap: number; threshold: number } {
    const final = this.c.totalStep - this.c.tfinal;
    if (step < final) {
      this.updateIpt(grads);
      const { budget, mask } = this.schedule(step);
      if (!mask) return { budget, pattern: null, gap: Infinity, threshold: 0 };
      const { pattern, gap, threshold } = this.maskToBudget(budget);
      this.rankPattern = pattern;
      return { budget, pattern, gap, threshold };
    }
    if (step === final) {
      const { budget } = this.schedule(step);
      const { pattern, gap, threshold } = this.maskToBudget(budget);
      this.rankPattern = pattern;
      this.state.clear();
      return { budget, pattern, gap, threshold };
    }
    this.modules.forEach((m, i) => this.rankPattern![i]!.forEach((keep, r) => !keep && (m.E[r] = 0)));
    return { budget: this.targetBudget, pattern: null, gap: Infinity, threshold: 0 };
  }
}

// ---- tests ----

describe('budgetSchedule', () => {
  it("reproduces PEFT's verified schedule (2 layers, init_r 6, target_r 2, tinit 2, tfinal 3, T 12)", () => {
    const options = { initialBudget: 12, targetBudget: 4, tinit: 2, tfinal: 3, totalStep: 12, deltaT: 1 };
    expect(Array.from({ length: 12 }, (_, step) => budgetSchedule(step, options).budget)).toEqual([12, 12, 12, 9, 6, 5, 4, 4, 4, 4, 4, 4]);
    expect(budgetSchedule(2, options).mask).toBe(false);
    expect(budgetSchedule(3, options).mask).toBe(true);
  });

  it("gives the total ranks of the fixture's training log (6 modules, 6 → 2, tinit 2, tfinal 2, T 10)", async () => {
    const reference = await readJson<{ adalora_notes: { training_log: { step: number; ranks: Record<string, number> | null }[] } }>(
      path.join(ADALORA_FIXTURE, 'reference.json'),
    );
    const options = { initialBudget: 36, targetBudget: 12, tinit: 2, tfinal: 2, totalStep: 10, deltaT: 1 };
    for (const { step, ranks } of reference.adalora_notes.training_log) {
      if (ranks === null) continue;
      const total = Object.values(ranks).reduce((a, b) => a + b, 0);
      expect(budgetSchedule(step, options).budget).toBe(total);
    }
  });

  it('masks only every deltaT steps in the cubic phase, and always after totalStep − tfinal', () => {
    const options = { initialBudget: 30, targetBudget: 10, tinit: 0, tfinal: 2, totalStep: 20, deltaT: 3 };
    expect([1, 2, 3, 6, 7].map((s) => budgetSchedule(s, options).mask)).toEqual([false, false, true, true, false]);
    expect(budgetSchedule(19, options)).toEqual({ budget: 10, mask: true });
  });
});

describe('RankAllocator', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  it("matches a float64 re-implementation of PEFT's importance, scores, masks and final pattern on hand-made gradients", () => {
    const shapes = [
      { inFeatures: 5, outFeatures: 4 },
      { inFeatures: 6, outFeatures: 3 },
      { inFeatures: 4, outFeatures: 7 },
    ];
    const initR = 4;
    const config = parseAdaLoraConfig({ initR, targetR: 2, totalStep: 12, tinit: 2, tfinal: 3, deltaT: 2, beta1: 0.85, beta2: 0.7, targetModules: ['m'] });
    const adapters = shapes.map((s, i) => new AdaLoraAdapter({ ...s, initR, loraAlpha: 8, seed: i }));
    const allocator = new RankAllocator({ config, modules: adapters.map((a, i) => [`m${i}`, a] as const) });
    const modules64: Module64[] = shapes.map((s, i) => ({
      rows: initR,
      ...s,
      A: float32(randomValues(initR * s.inFeatures, 10 + i, 0.5)),
      E: float32(randomValues(initR, 20 + i, 0.5)),
      B: float32(randomValues(s.outFeatures * initR, 30 + i, 0.5)),
    }));
    const reference = new PeftAllocator64(modules64, { beta1: 0.85, beta2: 0.7, tinit: 2, tfinal: 3, totalStep: 12, deltaT: 2, targetR: 2 });
    const startTensors = tf.memory().numTensors;
    let worstState = 0;
    let worstScore = 0;
    let masks = 0;
    const expectedTotals: number[] = [];
    for (let step = 0; step < 12; step++) {
      // "After the optimizer step": new weights (pruned E entries revive a little, as under AdamW), fresh gradients.
      modules64.forEach((m, i) => {
        for (const f of ['A', 'E', 'B'] as const) m[f] = float32(m[f].map((v, j) => v + randomValues(m[f].length, 1000 * step + 7 * i + f.charCodeAt(0), 0.05)[j]!));
      });
      const grads = modules64.map((m, i) => ({
        A: float32(randomValues(m.A.length, 5000 + 100 * step + i, 1)),
        E: float32(randomValues(m.E.length, 6000 + 100 * step + i, 1)),
        B: float32(randomValues(m.B.length, 7000 + 100 * step + i, 1)),
      }));
      const gradientMap = new Map<tf.Variable, tf.Tensor>();
      adapters.forEach((adapter, i) => {
        const m = modules64[i]!;
        tf.tidy(() => {
          adapter.loraA.assign(tf.tensor2d(m.A, [initR, m.inFeatures]));
          adapter.loraE.assign(tf.tensor2d(m.E, [initR, 1]));
          adapter.loraB.assign(tf.tensor2d(m.B, [m.outFeatures, initR]));
        });
        gradientMap.set(adapter.loraA, tf.tensor2d(grads[i]!.A, [initR, m.inFeatures]));
        gradientMap.set(adapter.loraE, tf.tensor2d(grads[i]!.E, [initR, 1]));
        gradientMap.set(adapter.loraB, tf.tensor2d(grads[i]!.B, [m.outFeatures, initR]));
      });
      const result = allocator.updateAndAllocate(step, gradientMap);
      const expected = reference.updateAndAllocate(step, grads);
      tf.dispose([...gradientMap.values()]);
      expect(result.budget).toBe(expected.budget);
      expectedTotals.push(reference.rankPattern ? reference.rankPattern.flat().filter(Boolean).length : 12);
      if (expected.pattern) {
        masks += 1;
        // The reference's ranking has no near-ties, so float32 vs float64 cannot flip a decision.
        expect(expected.gap).toBeGreaterThan(1e-4 * Math.abs(expected.threshold));
        expect(result.rankPattern).toEqual(Object.fromEntries(expected.pattern.map((p, i) => [`m${i}.lora_E`, p])));
      } else {
        expect(result.rankPattern).toBeNull();
      }
      // E after masking (and after re-masking in the final phase) is exactly the reference's.
      adapters.forEach((adapter, i) => expect(Array.from(adapter.loraE.dataSync())).toEqual(modules64[i]!.E));
      if (step < 9) {
        adapters.forEach((_, i) => {
          for (const f of ['A', 'E', 'B'] as const) {
            const ours = allocator.importanceOf(`m${i}`, `lora_${f}`)!;
            const theirs = reference.state.get(`${i}.${f}`)!;
            worstState = Math.max(worstState, maxRelativeDifference(ours.sensitivity, theirs.ipt), maxRelativeDifference(ours.uncertainty, theirs.unc));
          }
        });
        const ours = allocator.tripletScores();
        reference.scores().forEach((row, i) => (worstScore = Math.max(worstScore, maxRelativeDifference(ours.get(`m${i}`)!, row))));
      } else {
        expect(allocator.importanceOf('m0', 'lora_A')).toBeNull();
      }
    }
    console.log(`allocator vs float64 PEFT: importance max rel err ${worstState.toExponential(2)}, triplet scores ${worstScore.toExponential(2)}, ${masks} masks`);
    expect(masks).toBe(4); // steps 4, 6, 8 (deltaT 2) and the final step 9; 10 and 11 re-apply the final pattern
    expect(worstState).toBeLessThan(1e-5);
    expect(worstScore).toBeLessThan(1e-5);
    expect(adapters.reduce((sum, a) => sum + a.rank, 0)).toBe(6);
    const history = allocator.history();
    expect(history.entries.map((e) => e.total)).toEqual(expectedTotals);
    expect(expectedTotals).toEqual([12, 12, 12, 12, 8, 8, 6, 6, 6, 6, 6, 6]);
    expect(history.entries.map((e) => e.phase)).toEqual([...Array(3).fill('warmup'), ...Array(6).fill('budgeting'), 'final', 'fixed', 'fixed']);
    allocator.dispose();
    adapters.forEach((a) => a.dispose());
    expect(tf.memory().numTensors).toBe(startTensors - 9);
  });
});
