import { z } from 'zod';
import { adapterBaseShape, parseConfigWithSchema, refineTargetSelection, regexString } from './config-helpers.js';
import type { AdapterConfigBase } from './plugin.js';

/** LoRA's config: PEFT's `LoraConfig` fields in camelCase, with PEFT's defaults. */
export interface LoraConfig extends AdapterConfigBase {
  /** Rank (default 8). */
  readonly r: number;
  /** Scaling numerator (default 8): scaling = alpha / r, or alpha / √r with `useRslora`. */
  readonly loraAlpha: number;
  /** Dropout on the adapter input only (default 0). */
  readonly loraDropout: number;
  /** The target stores its weight [in, out] (GPT-2's Conv1D). Corrected per layer as PEFT does (default false). */
  readonly fanInFanOut: boolean;
  /** Scale by alpha/√r (rank-stabilised LoRA, default false). */
  readonly useRslora: boolean;
  /** `true`: A kaiming-uniform(a=√5), B zeros (default). `'gaussian'`: A ~ N(0, 1/r), B zeros. `false`: B random too (debugging). */
  readonly initLoraWeights: boolean | 'gaussian';
  /** Per-module rank by PEFT pattern (regex matching a dotted suffix). */
  readonly rankPattern: Readonly<Record<string, number>>;
  /** Per-module alpha by PEFT pattern. */
  readonly alphaPattern: Readonly<Record<string, number>>;
  /** Whether this is DoRA (handled by `@lora/dora`; the plain LoRA plugin refuses it). */
  readonly useDora: boolean;
  /** The base model's revision, as PEFT records it (default null); written back as given, never checked. */
  readonly revision: string | null;
}

export const loraConfigShape = {
  ...adapterBaseShape,
  r: z.number().int().positive().default(8),
  loraAlpha: z.number().positive().default(8),
  loraDropout: z.number().min(0).lt(1).default(0),
  fanInFanOut: z.boolean().default(false),
  useRslora: z.boolean().default(false),
  initLoraWeights: z.union([z.boolean(), z.literal('gaussian')]).default(true),
  // Keys are PEFT patterns matched against a dotted suffix of each module path.
  rankPattern: z.record(regexString('^(?:.*\\.)?(?:$)$'), z.number().int().positive()).default({}),
  alphaPattern: z.record(regexString('^(?:.*\\.)?(?:$)$'), z.number().positive()).default({}),
  useDora: z.boolean().default(false),
  loraBias: z.literal(false).default(false),
  revision: z.string().nullable().default(null),
} as const;

const loraConfigSchema = z.object(loraConfigShape).strict().superRefine(refineTargetSelection);

/** Names of every LoRA config field (camelCase). */
export const LORA_CONFIG_FIELDS: readonly string[] = Object.keys(loraConfigShape);

/** Examples quoted in error messages. */
export const LORA_CONFIG_EXAMPLES: Readonly<Record<string, string>> = {
  r: '8',
  loraAlpha: '16',
  loraDropout: '0.05',
  targetModules: "['q_proj', 'v_proj']",
  bias: "'none'",
  initLoraWeights: "true",
};

/**
 * Validate LoRA options and fill PEFT's defaults.
 * @throws {ConfigError} naming the field, e.g. `[lora] Invalid config: r must be >= 1, got 0. Pass e.g. { r: 8 }.`
 */
export function parseLoraConfig(options: unknown, plugin = 'lora'): LoraConfig {
  const parsed = parseConfigWithSchema(loraConfigSchema, options, { plugin, examples: LORA_CONFIG_EXAMPLES });
  const { loraBias: _loraBias, ...config } = parsed;
  return config as LoraConfig;
}
