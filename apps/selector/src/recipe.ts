import type { Variant } from './flowchart.js';

/** What a variant needs: its adapter plugin, base transforms and the packages providing them. */
export interface VariantRecipe {
  /** The flowchart variant this recipe is for. */
  readonly variant: Variant;
  /** Adapter plugin name in the registry. */
  readonly adapter: string;
  /** Base transform plugins applied to the frozen base before the adapter: `['quant']` (4-bit NF4) for QLoRA, else empty. */
  readonly transforms: readonly string[];
  /** npm packages that must be installed, in addition to @lora/core. */
  readonly packages: readonly string[];
  /** The adapter plugin's options (camelCase), validated by the plugin when it is loaded. */
  readonly options: Readonly<Record<string, unknown>>;
  /** One line on what the variant does. */
  readonly summary: string;
}

/** Training settings a recipe's options depend on. */
export interface RecipeContext {
  /** Module names the adapter wraps, copied into the options (PEFT's `target_modules`), e.g. `['c_attn', 'c_proj']` for GPT-2. */
  readonly targetModules: readonly string[];
  /** Whether the targets store weights [in, out] (GPT-2's Conv1D; PEFT's `fan_in_fan_out`); set in the LoRA, QLoRA, DoRA and AdaLoRA options. */
  readonly fanInFanOut: boolean;
  /** Total training steps: sets AdaLoRA's schedule (`totalStep`, `tinit` and `tfinal` of ~10% each, `deltaT` of ~5%); other variants ignore it. */
  readonly steps: number;
  /** PEFT's `task_type`, copied into the options. */
  readonly taskType: 'CAUSAL_LM' | 'SEQ_CLS';
}

/** The recipe for a variant: plugins to compose and a PEFT-style config for them. */
export function recipeFor(variant: Variant, context: RecipeContext): VariantRecipe {
  const lora = {
    r: 8,
    loraAlpha: 16,
    loraDropout: 0.05,
    targetModules: [...context.targetModules],
    fanInFanOut: context.fanInFanOut,
    taskType: context.taskType,
  };
  switch (variant) {
    case 'lora':
      return { variant, adapter: 'lora', transforms: [], packages: [], options: lora, summary: 'fixed low-rank update ΔW = (α/r)·B·A beside the frozen weights' };
    case 'qlora':
      return {
        variant,
        adapter: 'lora',
        transforms: ['quant'],
        packages: ['@lora/quant'],
        options: lora,
        summary: 'frozen base stored in 4-bit NF4 (double-quantized), LoRA trained beside it in float32',
      };
    case 'dora':
      return {
        variant,
        adapter: 'dora',
        transforms: [],
        packages: ['@lora/dora'],
        options: lora,
        summary: 'weight-decomposed LoRA: a trained magnitude per output times the normalised W + ΔW',
      };
    case 'adalora': {
      // PEFT's AdaLoRA schedule scaled to the run: warm-up and final phases of ~10% each.
      const tinit = Math.max(1, Math.floor(context.steps * 0.1));
      const tfinal = Math.max(1, Math.floor(context.steps * 0.1));
      return {
        variant,
        adapter: 'adalora',
        transforms: [],
        packages: ['@lora/adalora'],
        options: {
          initR: 12,
          targetR: 8,
          loraAlpha: 16,
          loraDropout: 0.05,
          targetModules: [...context.targetModules],
          fanInFanOut: context.fanInFanOut,
          totalStep: context.steps,
          tinit,
          tfinal,
          deltaT: Math.max(1, Math.floor(context.steps / 20)),
          taskType: context.taskType,
        },
        summary: 'SVD-form adapters whose rank budget moves from init_r to target_r where importance is highest',
      };
    }
    case 'hyperlora':
      return {
        variant,
        adapter: 'hyper',
        transforms: [],
        packages: ['@lora/hyper'],
        // The default corpus's condition (State of the Union, party × era); a --data run replaces it with its file's factors.
        options: {
          r: 8,
          loraAlpha: 16,
          targetModules: [...context.targetModules],
          taskType: context.taskType,
          condition: { kind: 'discrete', factors: [{ name: 'era', values: ['early', 'modern'] }, { name: 'party', values: ['Democratic', 'Republican'] }] },
        },
        summary: 'a hypernetwork generates the LoRA factors from a condition (task, language pair)',
      };
  }
}

/** Every variant of the flowchart, in its order. */
const VARIANTS: readonly Variant[] = ['lora', 'qlora', 'dora', 'adalora', 'hyperlora'];

/**
 * The plugin packages the flowchart's recipes name (beyond @lora/core), in flowchart order: the
 * only place the CLI names variant packages; everything else comes from their descriptors.
 */
export function recipePackages(): string[] {
  const context: RecipeContext = { targetModules: [], fanInFanOut: false, steps: 1, taskType: 'CAUSAL_LM' };
  return [...new Set(VARIANTS.flatMap((variant) => recipeFor(variant, context).packages))];
}

/** The package whose recipe uses plugin `name` (e.g. `quant` → the QLoRA recipe's package), or undefined. */
export function recipePackageFor(name: string): string | undefined {
  const context: RecipeContext = { targetModules: [], fanInFanOut: false, steps: 1, taskType: 'CAUSAL_LM' };
  for (const variant of VARIANTS) {
    const recipe = recipeFor(variant, context);
    if (recipe.adapter === name || recipe.transforms.includes(name)) return recipe.packages[recipe.packages.length - 1];
  }
  return undefined;
}
