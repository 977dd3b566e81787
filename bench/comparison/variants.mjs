// The comparison's rows: one definition per method, all on the same base model, data, steps and
// seeds. A definition names the packages it needs (loaded with import(), so a missing one is
// reported, never faked), the plugins it registers, the adapter plugin and base transforms of its
// recipe, and its config. Adding a method is adding one entry here.

/**
 * LoRA's settings, shared by every low-rank row so they differ only in method: rank 8, alpha 16
 * (scaling 2), on the attention projections of every block.
 */
export function loraSettings(context) {
  return { r: 8, loraAlpha: 16, loraDropout: 0, targetModules: context.targetModules, fanInFanOut: context.fanInFanOut, modulesToSave: context.modulesToSave };
}

/** AdaLoRA's schedule scaled to the run as the selector does: warm-up and final phases of ~10% each. */
function adaLoraSettings(context) {
  const tinit = Math.max(1, Math.floor(context.steps * 0.1));
  const tfinal = Math.max(1, Math.floor(context.steps * 0.1));
  return {
    initR: 12,
    targetR: 8,
    loraAlpha: 16,
    loraDropout: 0,
    targetModules: context.targetModules,
    fanInFanOut: context.fanInFanOut,
    modulesToSave: context.modulesToSave,
    totalStep: context.steps,
    tinit,
    tfinal,
    deltaT: Math.max(1, Math.floor(context.steps / 20)),
  };
}

/**
 * Every row of the comparison, in report order. Fields: `variant` (the JSON row's name), `label`,
 * `packages` (imported before the row runs), `plugins(packages, seed)` (beside core's `lora()`),
 * `adapter` (registry name; null = full fine-tuning), `transforms`, `config(context)`, `note`;
 * optional `conditioned` (forward passes take a condition) and `merges: false` (merge refuses).
 */
export const VARIANTS = [
  {
    variant: 'full',
    label: 'full fine-tuning',
    packages: [],
    plugins: () => [],
    adapter: null,
    transforms: [],
    config: () => null,
    note: 'every parameter trained (the reference)',
  },
  {
    variant: 'lora',
    label: 'LoRA',
    packages: [],
    plugins: () => [],
    adapter: 'lora',
    transforms: [],
    config: loraSettings,
    note: 'r 8, alpha 16',
  },
  {
    variant: 'dora',
    label: 'DoRA',
    packages: ['@lora/dora'],
    plugins: ({ '@lora/dora': dora }, seed) => [dora.dora({ seed })],
    adapter: 'dora',
    transforms: [],
    config: loraSettings,
    note: "weight-decomposed (PEFT's use_dora), r 8, alpha 16",
  },
  {
    variant: 'double-lora',
    label: 'double low-rank',
    packages: ['@lora/dora'],
    plugins: ({ '@lora/dora': dora }, seed) => [dora.doubleLora({ seed })],
    adapter: 'double-lora',
    transforms: [],
    // Two rank-4 pairs with LoRA's scaling (8/4 = 16/8): the same parameter count as LoRA r 8, the
    // setting of the guide's claim "better than LoRA at the same total parameter count".
    config: (context) => {
      const { r: _r, loraAlpha: _alpha, loraDropout: _dropout, ...rest } = loraSettings(context);
      return { ...rest, r1: 4, loraAlpha1: 8, r2: 4, loraAlpha2: 8 };
    },
    note: "the guide's \"DoRA\": two low-rank pairs, r 4 + 4, same parameter count as LoRA r 8",
  },
  {
    variant: 'qlora',
    label: 'QLoRA',
    packages: ['@lora/quant'],
    // `dequantize` merge mode keeps a merged model equal to the unmerged one (requantizing would
    // round the merged weight back to 4 bits).
    plugins: ({ '@lora/quant': quant }) => [quant.quant({ type: 'nf4', doubleQuant: true, merge: 'dequantize' })],
    adapter: 'lora',
    transforms: ['quant'],
    config: loraSettings,
    note: 'NF4 base with double quantization + LoRA r 8',
  },
  {
    variant: 'adalora',
    label: 'AdaLoRA',
    packages: ['@lora/adalora'],
    plugins: ({ '@lora/adalora': adalora }, seed) => [adalora.adalora({ seed })],
    adapter: 'adalora',
    transforms: [],
    config: adaLoraSettings,
    note: 'init r 12 → target r 8 (pruning only, as published)',
  },
  {
    variant: 'adalora',
    label: 'AdaLoRA + growth',
    packages: ['@lora/adalora'],
    plugins: ({ '@lora/adalora': adalora }, seed) => [adalora.adalora({ seed })],
    adapter: 'adalora',
    transforms: [],
    config: (context) => {
      const settings = adaLoraSettings(context);
      // Start at rank 4 and add a triplet to the 2 most important modules every ~10% of the run.
      return { ...settings, growth: { startRank: 4, every: Math.max(1, Math.floor(context.steps / 10)), rank: 1, modules: 2 } };
    },
    note: 'rank growth from 4 (IncreLoRA-style), budget ceiling r 8',
  },
  {
    // LoRA's rank, alpha and targets; the generator's defaults (basis heads, K 8, trunk 64 × 2);
    // condition dropout 0.1 as `lora train` uses, so the held-out combination is a valid input.
    variant: 'hyperlora',
    label: 'HyperLoRA',
    packages: ['@lora/hyper'],
    plugins: ({ '@lora/hyper': hyper }, seed) => [hyper.hyper({ seed })],
    adapter: 'hyper',
    transforms: [],
    // Each forward pass is given the condition of every row (`withCondition` in measure.mjs).
    conditioned: true,
    // One ΔW per condition, none for the adapter: merge refuses (export a condition, merge that),
    // so its merged inference figures are null.
    merges: false,
    config: (context) => ({
      r: 8,
      loraAlpha: 16,
      targetModules: context.targetModules,
      modulesToSave: context.modulesToSave,
      condition: { kind: 'discrete', factors: context.conditionFactors },
      conditionDropout: 0.1,
    }),
    note: 'one generator (basis heads) makes every r-8 LoRA from the condition (party × era; classification: one task), condition dropout 0.1; no merge (one ΔW per condition)',
  },
];

/** The row's `config` field: the method's settings and the run's, in one string. */
export function configLabel(definition, run) {
  return `${definition.label}: ${definition.note}; ${run}`;
}

/**
 * Import a row's packages. Returns `{ modules }`, or `{ missing }` naming the first package that is
 * not installed (any other import failure is thrown).
 */
export async function loadVariantPackages(definition) {
  const modules = {};
  for (const name of definition.packages) {
    try {
      modules[name] = await import(name);
    } catch (error) {
      if (error?.code === 'ERR_MODULE_NOT_FOUND' && String(error.message).includes(name)) return { missing: name };
      throw error;
    }
  }
  return { modules };
}
