import type { AdapterConfigBase, PeftConfigJson } from '@lora/core';
import { adapterBaseShape, optionsToPeftJson, parseConfigWithSchema, peftJsonToOptions, refineTargetSelection } from '@lora/core/internal';
import { z } from 'zod';

/** The `peft_type` written for double low-rank adapters (not a PEFT type: Python PEFT cannot load it). */
export const DOUBLE_LORA_PEFT_TYPE = 'DOUBLE_LORA';

/**
 * The double low-rank adapter's config: two independent LoRA pairs on every target,
 * ΔW = s₁·B₁A₁ + s₂·B₂A₂, each pair with its own rank, alpha and dropout. Target selection,
 * `bias`, `modulesToSave` and `taskType` mean what they mean in LoRA. On disk the keys are
 * snake_case (`r1`, `lora_alpha1`, `lora_dropout1`, `r2`, …) under `peft_type: "DOUBLE_LORA"`.
 */
export interface DoubleLoraConfig extends AdapterConfigBase {
  /** Rank of the first pair (default 8). */
  readonly r1: number;
  /** Alpha of the first pair (default 8): s₁ = loraAlpha1 / r1 (or / √r1 with `useRslora`). */
  readonly loraAlpha1: number;
  /** Dropout on the first pair's input (default 0). */
  readonly loraDropout1: number;
  /** Rank of the second pair (default 8). */
  readonly r2: number;
  /** Alpha of the second pair (default 8): s₂ = loraAlpha2 / r2 (or / √r2 with `useRslora`). */
  readonly loraAlpha2: number;
  /** Dropout on the second pair's input (default 0). */
  readonly loraDropout2: number;
  /** The target stores its weight [in, out] (GPT-2's Conv1D); informational, as in LoRA (default false). */
  readonly fanInFanOut: boolean;
  /** Scale each pair by alpha/√r (default false). */
  readonly useRslora: boolean;
  /** As LoRA's `initLoraWeights`, for both pairs (default true: A kaiming-uniform, B zeros). */
  readonly initLoraWeights: boolean | 'gaussian';
  /** The base model's revision, as PEFT records it (default null). */
  readonly revision: string | null;
}

const doubleLoraConfigShape = {
  ...adapterBaseShape,
  r1: z.number().int().positive().default(8),
  loraAlpha1: z.number().positive().default(8),
  loraDropout1: z.number().min(0).lt(1).default(0),
  r2: z.number().int().positive().default(8),
  loraAlpha2: z.number().positive().default(8),
  loraDropout2: z.number().min(0).lt(1).default(0),
  fanInFanOut: z.boolean().default(false),
  useRslora: z.boolean().default(false),
  initLoraWeights: z.union([z.boolean(), z.literal('gaussian')]).default(true),
  revision: z.string().nullable().default(null),
} as const;

const doubleLoraConfigSchema = z.object(doubleLoraConfigShape).strict().superRefine(refineTargetSelection);

/** Names of every double low-rank config field (camelCase). */
export const DOUBLE_LORA_CONFIG_FIELDS: readonly string[] = Object.keys(doubleLoraConfigShape);

const EXAMPLES: Readonly<Record<string, string>> = {
  r1: '8',
  r2: '4',
  loraAlpha1: '16',
  loraAlpha2: '8',
  loraDropout1: '0.05',
  loraDropout2: '0.1',
  targetModules: "['q_proj', 'v_proj']",
  bias: "'none'",
  initLoraWeights: 'true',
};

/**
 * Validate double low-rank options (camelCase) and fill the defaults.
 * @throws {ConfigError} naming the field, e.g. `[double-lora] Invalid config: r2 must be > 0, got 0. Pass e.g. { r2: 4 }.`
 * @example
 * const config = parseDoubleLoraConfig({ r1: 8, r2: 4, loraDropout2: 0.1, targetModules: ['q_proj'] });
 */
export function parseDoubleLoraConfig(options: unknown): DoubleLoraConfig {
  return parseConfigWithSchema(doubleLoraConfigSchema, options, { plugin: 'double-lora', examples: EXAMPLES }) as DoubleLoraConfig;
}

/**
 * Read a `DOUBLE_LORA` `adapter_config.json` object; keys it does not know are kept in `extraPeftFields`.
 * @throws {ConfigError} naming the field.
 * @example
 * const config = doubleLoraConfigFromPeftJson({ peft_type: 'DOUBLE_LORA', r1: 8, r2: 2, target_modules: ['q_proj'] });
 */
export function doubleLoraConfigFromPeftJson(json: PeftConfigJson): DoubleLoraConfig {
  return parseDoubleLoraConfig(peftJsonToOptions(json, DOUBLE_LORA_CONFIG_FIELDS));
}

/**
 * Write the config in PEFT's style (snake_case, sorted, `inference_mode: true`) with
 * `peft_type: "DOUBLE_LORA"`; `exclude_modules` only when set.
 * @example
 * const json = doubleLoraConfigToPeftJson(parseDoubleLoraConfig({ r1: 8, r2: 2 })); // json.r2 === 2
 */
export function doubleLoraConfigToPeftJson(config: DoubleLoraConfig): PeftConfigJson {
  const { excludeModules, ...rest } = config;
  return optionsToPeftJson(DOUBLE_LORA_PEFT_TYPE, excludeModules === null ? rest : config);
}
