import { ConfigError, type AdapterConfigBase, type PeftConfigJson } from '@lora/core';
import { adapterBaseShape, optionsToPeftJson, parseConfigWithSchema, peftJsonToOptions, refineTargetSelection } from '@lora/core/internal';
import { z } from 'zod';

/** The plugin name used in errors and in the registry. */
export const ADALORA_PLUGIN_NAME = 'adalora';

/**
 * Opt-in rank growth, our extension modelled on IncreLoRA (Zhang et al. 2023); published AdaLoRA
 * only prunes. Every module holds `initR` triplet slots; it starts with `startRank` of them live
 * and the rest dormant (all zero, so they neither contribute nor receive gradients).
 *
 * The rule, at every global step `t` with `0 < t < totalStep − tfinal` and `t % every === 0`:
 * 1. each module with a dormant slot is scored by the mean AdaLoRA triplet score of its live
 *    triplets (the same smoothed sensitivity × uncertainty score the pruning uses);
 * 2. the `modules` highest-scoring modules (ties: first in module order) each get `rank` dormant
 *    slots made live: their A row and B column are drawn as PEFT initialises them (N(0, 0.02)),
 *    E stays 0 — so the model's output is exactly unchanged at the moment of growth;
 * 3. a grown triplet is exempt from pruning for `every` steps (its own warm-up, like `tinit` for
 *    the initial triplets), while its importance accumulates from zero.
 *
 * The budget schedule is unchanged and acts as a ceiling on kept triplets: pruning removes the
 * lowest-scoring live triplets only while more are live than the budget allows. Ranks never exceed
 * `initR`, so a grown adapter is saved in PEFT's format and loads in Python PEFT.
 */
export interface AdaLoraGrowthOptions {
  /** Live triplets per module at the start, 1 ≤ startRank ≤ initR. */
  readonly startRank: number;
  /** Grow every this many global steps. */
  readonly every: number;
  /** Triplets added to each selected module per growth event (default 1). */
  readonly rank: number;
  /** Modules selected per growth event (default 1). */
  readonly modules: number;
}

/**
 * Which orthogonal regulariser `extraLoss` adds.
 * - `peft` (default): `orthRegWeight · (1/N) · Σ ‖M − I‖_F` over every A (M = A·Aᵀ) and every B
 *   (M = Bᵀ·B); N counts the A and B matrices (rank-0 modules included, with norm 0). The norm is
 *   not squared and the sum is averaged, exactly as PEFT's `AdaLoraModel.forward`.
 * - `paper`: the AdaLoRA paper's `orthRegWeight · Σ_modules (‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F)`:
 *   squared norms, summed, not averaged.
 */
export type OrthogonalRegularizer = 'peft' | 'paper';

/** AdaLoRA's config: PEFT's `AdaLoraConfig` fields in camelCase with PEFT's defaults, plus two extensions. */
export interface AdaLoraConfig extends AdapterConfigBase {
  /** Initial rank of every module, the number of triplet slots (default 12). */
  readonly initR: number;
  /** Target average rank: the final budget is `targetR × number of modules` (default 8). */
  readonly targetR: number;
  /** Warm-up steps without pruning (default 0). */
  readonly tinit: number;
  /** Length of the final phase, which keeps the final rank pattern fixed (default 0). */
  readonly tfinal: number;
  /** Reallocate the budget every this many steps during the cubic phase (default 1). PEFT's `deltaT`. */
  readonly deltaT: number;
  /** EMA coefficient of the sensitivity (default 0.85). */
  readonly beta1: number;
  /** EMA coefficient of the uncertainty (default 0.85). */
  readonly beta2: number;
  /** Weight of the orthogonal regulariser (default 0.5; 0 adds none). */
  readonly orthRegWeight: number;
  /** Total optimizer steps of the run; required to train (PEFT's `total_step`). Null only for inference. */
  readonly totalStep: number | null;
  /** Kept triplets per module, keyed `<module path>.lora_E`, as PEFT saves it; null before any allocation. */
  readonly rankPattern: Readonly<Record<string, readonly boolean[]>> | null;
  /** Scaling numerator (default 8): scale = loraAlpha / (initR + 1e-5), or initR/(initR + 1e-5) when loraAlpha ≤ 0. */
  readonly loraAlpha: number;
  /** Dropout on the adapter input (default 0). */
  readonly loraDropout: number;
  /** Written back as given; the layout of each target is read from the layer itself (default false). */
  readonly fanInFanOut: boolean;
  /** `true` / `'gaussian'` (PEFT treats both alike): E = 0, A and B ~ N(0, 0.02). `false`: all three ~ N(0, 1). Default true. */
  readonly initLoraWeights: boolean | 'gaussian';
  /** LoraConfig's rank, unused by AdaLoRA (PEFT ignores it too; use `initR`). Default 8. */
  readonly r: number;
  /** Kept for round trips; AdaLoRA's scaling ignores it, as in PEFT. */
  readonly useRslora: boolean;
  /** Kept for round trips; AdaLoRA ignores it, as in PEFT. */
  readonly alphaPattern: Readonly<Record<string, number>>;
  /** Must be false: PEFT's AdaLoRA does not support DoRA. */
  readonly useDora: boolean;
  /** The base model's revision, written back as given. */
  readonly revision: string | null;
  /** Our extension (not written to `adapter_config.json`): rank growth, off by default (null). */
  readonly growth: AdaLoraGrowthOptions | null;
  /** Our extension (not written to `adapter_config.json`): the regulariser's form (default `peft`). */
  readonly orthogonalRegularizer: OrthogonalRegularizer;
}

const growthShape = z
  .object({
    startRank: z.number().int().positive(),
    every: z.number().int().positive(),
    rank: z.number().int().positive().default(1),
    modules: z.number().int().positive().default(1),
  })
  .strict();

const adaLoraConfigShape = {
  ...adapterBaseShape,
  initR: z.number().int().positive().default(12),
  targetR: z.number().int().nonnegative().default(8),
  tinit: z.number().int().nonnegative().default(0),
  tfinal: z.number().int().nonnegative().default(0),
  deltaT: z.number().int().positive().default(1),
  beta1: z.number().gt(0).lt(1).default(0.85),
  beta2: z.number().gt(0).lt(1).default(0.85),
  orthRegWeight: z.number().nonnegative().default(0.5),
  totalStep: z.number().int().positive().nullable().default(null),
  rankPattern: z.record(z.array(z.boolean())).nullable().default(null),
  loraAlpha: z.number().finite().default(8),
  loraDropout: z.number().min(0).lt(1).default(0),
  fanInFanOut: z.boolean().default(false),
  initLoraWeights: z.union([z.boolean(), z.literal('gaussian')]).default(true),
  r: z.number().int().nonnegative().default(8),
  useRslora: z.boolean().default(false),
  alphaPattern: z.record(z.number()).default({}),
  useDora: z.boolean().default(false),
  revision: z.string().nullable().default(null),
  growth: growthShape.nullable().default(null),
  orthogonalRegularizer: z.enum(['peft', 'paper']).default('peft'),
} as const;

const adaLoraConfigSchema = z.object(adaLoraConfigShape).strict().superRefine(refineTargetSelection);

/** Fields that are ours and never written to `adapter_config.json`. */
const EXTENSION_FIELDS = ['growth', 'orthogonalRegularizer'] as const;

/** Names of every AdaLoRA config field (camelCase). */
export const ADALORA_CONFIG_FIELDS: readonly string[] = Object.keys(adaLoraConfigShape);

const EXAMPLES: Readonly<Record<string, string>> = {
  initR: '12',
  targetR: '8',
  totalStep: '1000',
  tinit: '200',
  tfinal: '500',
  deltaT: '10',
  beta1: '0.85',
  beta2: '0.85',
  orthRegWeight: '0.5',
  loraAlpha: '32',
  loraDropout: '0.05',
  targetModules: "['q_proj', 'v_proj']",
  bias: "'none'",
  growth: '{ startRank: 2, every: 50 }',
};

/**
 * Validate AdaLoRA options (camelCase) and fill PEFT's defaults.
 *
 * For a trainable adapter (`inferenceMode: false`, the default) it also checks what PEFT checks
 * before training: `totalStep` is set, `tinit < totalStep − tfinal`; and, where PEFT would fail
 * later inside `kthvalue`, that `targetR ≤ initR`. Adapters loaded for inference skip these, so
 * files saved by PEFT before `total_step` became mandatory still load.
 *
 * @throws {ConfigError} naming the field, e.g. `[adalora] Invalid config: totalStep must be …`.
 * @example
 * const config = parseAdaLoraConfig({ initR: 12, targetR: 4, totalStep: 1000, targetModules: ['q_proj', 'v_proj'] });
 */
export function parseAdaLoraConfig(options: unknown): AdaLoraConfig {
  const config = parseConfigWithSchema(adaLoraConfigSchema, options, { plugin: ADALORA_PLUGIN_NAME, examples: EXAMPLES }) as AdaLoraConfig;
  const fail = (field: string, received: unknown, expected: string, hint?: string): never => {
    throw new ConfigError({ plugin: ADALORA_PLUGIN_NAME, field, received, expected, hint });
  };
  if (config.useDora) {
    fail('useDora', true, 'false', "PEFT's AdaLoRA does not support DoRA; use @lora/dora's dora() plugin for DoRA.");
  }
  if (config.growth && config.growth.startRank > config.initR) {
    fail('growth.startRank', config.growth.startRank, `at most initR (${config.initR})`, 'Growth adds triplets up to initR, so files stay loadable by PEFT.');
  }
  if (!config.inferenceMode) {
    if (config.totalStep === null) {
      fail(
        'totalStep',
        (options as Record<string, unknown> | null | undefined)?.['totalStep'],
        "a positive integer: the number of optimizer steps of the whole run (PEFT's total_step)",
        "AdaLoRA's budget schedule needs it. Pass e.g. { totalStep: 1000 } (total_step in adapter_config.json).",
      );
    }
    const totalStep = config.totalStep as number;
    if (config.tinit >= totalStep - config.tfinal) {
      fail(
        'tinit',
        config.tinit,
        `less than totalStep − tfinal (${totalStep} − ${config.tfinal} = ${totalStep - config.tfinal})`,
        'The budgeting phase would be empty; lower tinit or tfinal, or raise totalStep.',
      );
    }
    if (config.targetR > config.initR) {
      fail('targetR', config.targetR, `at most initR (${config.initR})`, 'The budget can only shrink from initR to targetR; to start small and grow, set growth.startRank.');
    }
  }
  return config;
}

/**
 * Read an AdaLoRA `adapter_config.json` object. Unknown keys are kept and written back.
 * @throws {ConfigError} on invalid values, a set `loftq_config` or `use_dora`.
 */
export function adaLoraConfigFromPeftJson(json: PeftConfigJson): AdaLoraConfig {
  const loftq = json['loftq_config'];
  if (loftq !== null && loftq !== undefined && typeof loftq === 'object' && Object.keys(loftq).length > 0) {
    throw new ConfigError({ plugin: ADALORA_PLUGIN_NAME, field: 'loftq_config', received: loftq, expected: 'empty', hint: "PEFT's AdaLoRA does not support LoftQ." });
  }
  const fields = ADALORA_CONFIG_FIELDS.filter((field) => !(EXTENSION_FIELDS as readonly string[]).includes(field));
  return parseAdaLoraConfig(peftJsonToOptions(json, fields));
}

/**
 * Write an AdaLoRA config as PEFT does (snake_case keys, PEFT's `deltaT` spelling, sorted keys,
 * `inference_mode: true`). Our extension fields are left out so the file loads in every PEFT
 * version; `rankPattern` overrides the config's own.
 */
export function adaLoraConfigToPeftJson(
  config: AdaLoraConfig,
  rankPattern: Readonly<Record<string, readonly boolean[]>> | null = config.rankPattern,
): PeftConfigJson {
  const { growth: _growth, orthogonalRegularizer: _form, excludeModules, rankPattern: _pattern, ...rest } = config;
  // PEFT before 0.14 rejects unknown keys: write exclude_modules only when set (as core's LoRA does).
  const fields: Record<string, unknown> = excludeModules === null ? { ...rest } : { ...rest, excludeModules };
  fields['rankPattern'] = rankPattern;
  const json = { ...optionsToPeftJson('ADALORA', fields) } as Record<string, unknown>;
  // camelToSnake would write delta_t; PEFT's field is literally `deltaT`.
  json['deltaT'] = json['delta_t'];
  delete json['delta_t'];
  const sorted: Record<string, unknown> = {};
  for (const key of Object.keys(json).sort()) sorted[key] = json[key];
  return sorted as PeftConfigJson;
}
