import { initRuntime } from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { hyperParameterCount, parseHyperLoraConfig, planTargets } from '../src/index.js';
import { createHyperModel, tinyConfig } from './helpers.js';

beforeAll(async () => {
  await initRuntime();
});

describe('hyperParameterCount', () => {
  for (const headMode of ['full', 'basis', 'diag'] as const) {
    for (const condition of [undefined, { kind: 'continuous', size: 5, dim: 4 }] as const) {
      it(`equals the sizes of the variables the state creates (${headMode}, ${condition ? 'continuous' : 'discrete'})`, async () => {
        await withoutTensorLeaks(() => {
          const hyper = createHyperModel({ config: tinyConfig(condition ? { headMode, condition } : { headMode }) });
          const counted = hyper.state.namedTensors().reduce((sum, [, variable]) => sum + variable.size, 0);
          const formula = hyper.state.parameterCount();
          expect(formula.total).toBe(counted);
          expect(formula.condition + formula.positions + formula.trunk + formula.heads).toBe(formula.total);
          expect(formula.oneLora).toBe(2 * (6 + 5) * 4);
          hyper.dispose();
        });
      });
    }
  }

  it("reproduces the design brief's worked example (d_model 512, 12 layers, q and v, r 8, H 256, k 2)", () => {
    // The brief counts V_f·e_f per table and no input LayerNorm; we add one null row per factor
    // (2 factors × 32) and the trunk's input LayerNorm (2·m, m = 64 + 16 + 16 = 96).
    const targets = Array.from({ length: 12 }, (_, layer) =>
      ['q', 'v'].map((name) => [`model.layers.${layer}.${name}`, { inFeatures: 512, outFeatures: 512 }] as const),
    ).flat();
    const plan = planTargets(targets, null);
    expect([plan.layers.length, plan.types.length]).toEqual([12, 2]);
    const condition = { kind: 'discrete', factors: ['src', 'tgt'].map((name) => ({ name, values: ['en', 'fr', 'de'], dim: 32 })) };
    const common = { r: 8, condition, trunkWidth: 256, trunkDepth: 2, layerEmbeddingDim: 16, typeEmbeddingDim: 16, targetModules: ['q', 'v'] };
    const extra = 2 * 32 + 2 * 96;
    const full = hyperParameterCount(parseHyperLoraConfig({ ...common, headMode: 'full' }), plan);
    const basis = hyperParameterCount(parseHyperLoraConfig({ ...common, headMode: 'basis', basisSize: 32 }), plan);
    const diag = hyperParameterCount(parseHyperLoraConfig({ ...common, headMode: 'diag' }), plan);
    expect(full.total).toBe(4_301_728 + extra);
    expect(basis.total).toBe(648_224 + extra);
    expect(diag.total).toBe(291_760 + extra);
    expect(full.oneLora).toBe(196_608);
  });
});
