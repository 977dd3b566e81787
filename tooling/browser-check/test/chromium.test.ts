import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Browser } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bundleForBrowser } from '../src/bundle.js';
import { launchChromium } from '../src/chromium.js';
import type { ArchitectureCheckRequest, ArchitectureCheckResult, CheckRequest, CheckResult, RecipeResult } from '../src/page.js';
import { servePage, type PageServer } from '../src/serve.js';

const PAGE_ENTRY = fileURLToPath(new URL('../src/page.ts', import.meta.url));
const WASM_DIRECTORY = path.join(path.dirname(createRequire(import.meta.url).resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'wasm-out');

let browser: Browser | undefined;
let server: PageServer | undefined;

beforeAll(async () => {
  const bundle = await bundleForBrowser(PAGE_ENTRY);
  if (bundle.code === null || bundle.nodeBuiltins.length > 0) {
    throw new Error(`The page does not bundle for the browser: ${JSON.stringify({ nodeBuiltins: bundle.nodeBuiltins, errors: bundle.errors })}`);
  }
  server = await servePage(bundle.code, WASM_DIRECTORY);
  browser = await launchChromium();
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
});

/** Open the page in a fresh tab (a fresh tfjs) and run one of its checks; page errors fail the run. */
async function inPage<Result>(entry: 'loraCheck' | 'loraArchitectureCheck', request: object): Promise<Result> {
  const page = await browser!.newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  try {
    await page.goto(server!.url);
    await page.waitForFunction((name) => typeof (globalThis as Record<string, unknown>)[name] === 'function', { timeout: 30_000 }, entry);
    const result = await page.evaluate((name, body) => (globalThis as unknown as Record<string, (request: object) => Promise<unknown>>)[name]!(body), entry, request);
    expect(pageErrors).toEqual([]);
    return result as Result;
  } finally {
    await page.close();
  }
}

const check = (request: CheckRequest): Promise<CheckResult> => inPage('loraCheck', request);
const architectureCheck = (request: ArchitectureCheckRequest): Promise<ArchitectureCheckResult> => inPage('loraArchitectureCheck', request);

function expectTrainedAndReloaded(result: RecipeResult): void {
  const { recipe, losses } = result;
  expect(losses, recipe).toHaveLength(4);
  for (const loss of losses) expect(Number.isFinite(loss), `${recipe} loss ${loss}`).toBe(true);
  // Four steps on two fixed batches: some later loss is below the first.
  expect(Math.min(...losses.slice(1)), recipe).toBeLessThan(losses[0]!);
  expect(result.savedBytes['adapter_config.json'], recipe).toBeGreaterThan(0);
  expect(result.savedBytes['adapter_model.safetensors'], recipe).toBeGreaterThan(0);
  expect(result.reloadMaxAbsDiff, `${recipe}: trained vs reloaded logits`).toBeLessThanOrEqual(1e-6);
  // The trained adapter moves the logits, so "identical after reload" is not the base model twice.
  expect(result.adapterEffect, `${recipe}: trained vs base logits`).toBeGreaterThan(1e-4);
  expect(result.tensorsAfter, `${recipe}: tensors left behind`).toBe(result.tensorsBefore);
}

describe('the @lora packages in headless Chromium', () => {
  for (const backend of ['cpu', 'wasm', 'webgl'] as const) {
    it(`trains LoRA, DoRA, QLoRA, AdaLoRA and HyperLoRA adapters on ${backend}, saves them to bytes and reloads them with identical logits`, async () => {
      const recipes = ['lora', 'dora', 'qlora', 'adalora', 'hyper'] as const;
      const result = await check({ backend, recipes });
      console.log(`${backend}: ${result.results.map((r) => `${r.recipe} loss ${r.losses[0]!.toFixed(4)} → ${r.losses.at(-1)!.toFixed(4)}, reload diff ${r.reloadMaxAbsDiff}`).join('; ')}`);
      expect(result.backend).toBe(backend);
      // Core's SIMD kernel for attention and thin products must run in a page too, not fall back.
      expect(result.simdMatMul).toBe(backend === 'wasm');
      // Its build with fused multiply-adds: Chromium (114+) accepts relaxed SIMD without a flag.
      expect(result.kernelBuild).toBe(backend === 'wasm' ? 'fma' : null);
      // And its fused kernels (instantiated asynchronously: a page may refuse a synchronous compile).
      const fused = ['LoraAdamWUpdate', 'LoraAllFinite', 'LoraAttention', 'LoraAttentionGrad', 'LoraCausalAttention', 'LoraCausalAttentionGrad', 'LoraCausalMix', 'LoraCausalScores', 'LoraCausalSelfAttention', 'LoraCausalSelfAttentionGrad', 'LoraCrossEntropy', 'LoraCrossEntropyGrad', 'LoraDropout', 'LoraGeluErf', 'LoraGeluErfGrad', 'LoraGeluTanh', 'LoraGeluTanhGrad', 'LoraLayerNorm', 'LoraLayerNormGrad', 'LoraLayerNormWeightGrad', 'LoraLinearBackward', 'LoraLinearDropoutForward', 'LoraLinearForward', 'LoraLowRankAdd', 'LoraLowRankBackward', 'LoraLowRankForward', 'LoraRmsNorm', 'LoraRmsNormGrad', 'LoraRmsNormWeightGrad', 'LoraRotary', 'LoraScaledSoftmax', 'LoraScaledSoftmaxGrad', 'LoraSensitivityUpdate', 'LoraSilu', 'LoraSiluGrad', 'LoraSumOfSquares'];
      expect([...result.fusedKernels].sort()).toEqual(backend === 'wasm' ? fused : []);
      // Registered is not enough: training (LoRA dropout 0.1 on the adapters' input) ran the fused dropout and the others.
      for (const recipe of result.results) {
        // LoRA's layers train through the fused layer kernels (base product included; with dropout on the adapter's input),
        // QLoRA's (a 4-bit base) through the fused LoRA passes; DoRA's have their own arithmetic.
        const lowRankByRecipe: Partial<Record<RecipeResult['recipe'], string[]>> = { lora: ['LoraLinearDropoutForward', 'LoraLinearBackward'], qlora: ['LoraLowRankForward', 'LoraLowRankBackward'] };
        const lowRank = lowRankByRecipe[recipe.recipe] ?? [];
        // GPT-2's causal attention (no dropout on its probabilities) runs as one kernel each way, on its fused projection.
        const causal = ['LoraCausalSelfAttention', 'LoraCausalSelfAttentionGrad'];
        // Every recipe but HyperLoRA has dropout on the adapters' input.
        const dropout = recipe.recipe === 'hyper' ? [] : ['LoraDropout'];
        if (backend === 'wasm') expect(recipe.fusedKernelsRun, recipe.recipe).toEqual(expect.arrayContaining([...dropout, 'LoraGeluTanh', 'LoraLayerNorm', 'LoraAdamWUpdate', ...lowRank, ...causal]));
        else expect(recipe.fusedKernelsRun, recipe.recipe).toEqual([]);
        if (recipe.recipe === 'adalora') expect(recipe.rankAllocation).toEqual({ phases: ['warmup', 'warmup', 'budgeting', 'final'], total: 8 });
      }
      expect(result.results.map((r) => r.recipe)).toEqual(recipes);
      for (const recipe of result.results) expectTrainedAndReloaded(recipe);
    });
  }

  // LoRA, DoRA, AdaLoRA and HyperLoRA: QLoRA quantizes the base weights on the host when a model is
  // built, synchronously, which headless Chromium's WebGPU on SwiftShader does not survive (see
  // page.ts); the other backends check it. (DoRA's zero-row check reads its magnitudes only on the
  // host-memory backends; AdaLoRA's training hook reads the triplet scores with `await data()`.)
  it('trains LoRA, DoRA, AdaLoRA and HyperLoRA adapters on webgpu (WebGPU on SwiftShader) with the cpu backend\'s losses, saves them asynchronously and reloads them with identical logits', async () => {
    const recipes = ['lora', 'dora', 'adalora', 'hyper'] as const;
    const cpu = await check({ backend: 'cpu', recipes, reads: 'async' });
    const gpu = await check({ backend: 'webgpu', recipes, reads: 'async' });
    expect(cpu.backend).toBe('cpu');
    expect(gpu.backend).toBe('webgpu');
    expect(gpu.results.map((r) => r.recipe)).toEqual(recipes);
    for (const [index, result] of gpu.results.entries()) {
      const reference = cpu.results[index]!;
      const largest = Math.max(...result.losses.map((loss, step) => Math.abs(loss - reference.losses[step]!)));
      console.log(`webgpu ${result.recipe}: loss ${result.losses.map((loss) => loss.toFixed(5)).join(' → ')} (cpu ${reference.losses.map((loss) => loss.toFixed(5)).join(' → ')}; largest |Δ| ${largest.toExponential(2)}), reload diff ${result.reloadMaxAbsDiff}`);
      expectTrainedAndReloaded(result);
      expectTrainedAndReloaded(reference);
      // The same seeded model, data and dropout masks: each step's loss as on the cpu backend, within
      // float32 rounding of the GPU's other summation orders (measured for LoRA: at most 4.8e-7; an
      // AddN of 8 inputs, which WebGPU drops, put step 3 off by 1.5e-4).
      for (const [step, loss] of result.losses.entries()) expect(Math.abs(loss - reference.losses[step]!), `${result.recipe} step ${step + 1}`).toBeLessThanOrEqual(1e-5);
      // The gradient norm sums 8 factors' squares (12 with DoRA's magnitudes or AdaLoRA's E): tfjs's webgpu AddN fails past 7 inputs, so no AddN may have more.
      expect(result.addNCalls).toBeGreaterThan(0);
      expect(result.maxAddNInputs).toBeLessThanOrEqual(7);
      // AdaLoRA's allocator ran its whole schedule, reading the scores asynchronously at the two masks:
      // 4 modules kept 2 triplets each of 4.
      if (result.recipe === 'adalora') expect(result.rankAllocation).toEqual({ phases: ['warmup', 'warmup', 'budgeting', 'final'], total: 8 });
      else expect(result.rankAllocation).toBeNull();
      // The saved files are the cpu backend's, to the byte count (AdaLoRA's pruned to the same ranks).
      expect(result.savedBytes).toEqual(reference.savedBytes);
    }
  });

  it('trains LoRA on Llama and on a BERT classifier on wasm, webgl and webgpu with the cpu backend\'s losses, and generates its tokens asynchronously', async () => {
    const cpu = await architectureCheck({ backend: 'cpu' });
    expect(cpu.backend).toBe('cpu');
    for (const backend of ['wasm', 'webgl', 'webgpu'] as const) {
      const result = await architectureCheck({ backend });
      expect(result.backend).toBe(backend);
      for (const architecture of ['llama', 'bert'] as const) {
        const losses = result.losses[architecture];
        const reference = cpu.losses[architecture];
        const largest = Math.max(...losses.map((loss, step) => Math.abs(loss - reference[step]!)));
        console.log(`${backend} ${architecture}: loss ${losses.map((loss) => loss.toFixed(5)).join(' → ')} (largest |Δ| from cpu ${largest.toExponential(2)})`);
        expect(losses, `${backend} ${architecture}`).toHaveLength(4);
        expect(Math.min(...reference.slice(1)), architecture).toBeLessThan(reference[0]!);
        // Seeded, so the same dropout masks: the cpu backend's losses within float32 rounding of other
        // summation orders (and, on wasm, of core's fused kernels: BERT's exact gelu among them).
        for (const [step, loss] of losses.entries()) expect(Math.abs(loss - reference[step]!), `${backend} ${architecture} step ${step + 1}`).toBeLessThanOrEqual(1e-5);
      }
      // generateAsync's greedy tokens as the cpu backend's (on webgpu with no synchronous read at all: Llama's
      // per-row positions of the left-padded prompts become rotary tables on the device).
      console.log(`${backend} generateAsync: ${JSON.stringify(result.generated)}`);
      expect(result.generated, `${backend} generateAsync`).toEqual(cpu.generated);
      expect(result.tensorsAfter, `${backend}: tensors left behind`).toBe(result.tensorsBefore);
      // BERT's exact gelu and attention (its right-padded batch in one kernel each way), Llama's SiLU, RMSNorm and rotary
      // embedding as core's fused kernels each way on wasm; the GPU backends run tfjs's own kernels.
      if (backend === 'wasm') {
        expect(result.fusedKernelsRun.bert).toEqual(expect.arrayContaining(['LoraGeluErf', 'LoraGeluErfGrad', 'LoraAttention', 'LoraAttentionGrad']));
        expect(result.fusedKernelsRun.llama).toEqual(expect.arrayContaining(['LoraSilu', 'LoraSiluGrad', 'LoraRmsNorm', 'LoraRmsNormGrad', 'LoraRotary']));
      } else {
        expect(result.fusedKernelsRun.bert).toEqual([]);
        expect(result.fusedKernelsRun.llama).toEqual([]);
      }
    }
    expect(cpu.tensorsAfter).toBe(cpu.tensorsBefore);
    // Prompts of 3 and 2 tokens, 8 new tokens each, not one token repeated.
    expect(cpu.generated.map((row) => row.length)).toEqual([11, 10]);
    expect(cpu.generated.every((row) => new Set(row.slice(-8)).size > 1)).toBe(true);
  });

  it('lets useBestBackend choose, and it says why it passed over each faster backend', async () => {
    const result = await check({ backend: 'auto', recipes: [] });
    console.log(result.report);
    const selected = result.attempts.filter((attempt) => attempt.outcome === 'selected');
    expect(selected).toHaveLength(1);
    expect(result.backend).toBe(selected[0]!.kind === 'wasm-threads' ? 'wasm' : selected[0]!.kind);
    // Chromium here has a WebGPU adapter (SwiftShader) and the page imports tfjs's webgpu backend: first in the order, it is chosen.
    expect(result.attempts[0]!.kind).toBe('webgpu');
    expect(selected[0]!.kind).toBe('webgpu');
    for (const skipped of result.attempts.filter((attempt) => attempt.outcome === 'skipped')) {
      expect(skipped.reason, skipped.kind).toMatch(/^(not-supported|no-gpu-adapter|not-installed|init-failed|single-core)$/u);
      expect(skipped.message.length, skipped.kind).toBeGreaterThan(10);
    }
  });
});
