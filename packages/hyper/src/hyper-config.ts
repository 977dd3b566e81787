import type { AdapterConfigBase, PeftConfigJson } from '@lora/core';
import { ConfigError } from '@lora/core';
import { adapterBaseShape, optionsToPeftJson, parseConfigWithSchema, peftJsonToOptions, refineTargetSelection } from '@lora/core/internal';
import { z } from 'zod';

/** The `peft_type` of a saved HyperLoRA (not a Python PEFT type; a fixed condition exports to `LORA`). */
export const HYPERLORA_PEFT_TYPE = 'HYPERLORA';

/** One discrete condition factor (e.g. `task`, `src`, `tgt`): its values and embedding width. */
export interface ConditionFactor {
  /** Factor name, e.g. `party`. */
  readonly name: string;
  /** The known values (the vocabulary), e.g. `['D', 'R']`. A missing value uses the factor's learned null embedding. */
  readonly values: readonly string[];
  /** Embedding width of this factor (default 16). */
  readonly dim: number;
}

/** Discrete conditions: one embedding table per factor, each with a learned null row; the condition vector is their concatenation. */
export interface DiscreteConditionSpec {
  /** Discriminant: conditions are objects `{ factor: value }`. */
  readonly kind: 'discrete';
  /** The factors (at least one, distinct names), in the order their embeddings are concatenated and condition keys are written. */
  readonly factors: readonly ConditionFactor[];
}

/** A continuous condition vector of length `size` (a user or task embedding), encoded as `LayerNorm(Linear(size → dim))`. */
export interface ContinuousConditionSpec {
  /** Discriminant: conditions are number vectors of length `size`. */
  readonly kind: 'continuous';
  /** Length of the condition vector the caller passes. */
  readonly size: number;
  /** Width of the encoded condition (default 16). */
  readonly dim: number;
}

/** What a HyperLoRA is conditioned on. */
export type ConditionSpec = DiscreteConditionSpec | ContinuousConditionSpec;

/** How the generator's heads turn a trunk row into A (r×in) and B (out×r). */
export type HeadMode = 'full' | 'basis' | 'diag';

/**
 * A HyperLoRA config: one generator H maps a condition c to the LoRA factors of every target,
 * ΔW(c) = s·B(c)·A(c) with s = loraAlpha/r (or /√r with `useRslora`), the same scale a PEFT LoRA
 * uses, so a fixed condition exports to a plain LoRA. Target selection, `bias`, `modulesToSave`
 * and `taskType` mean what they mean in LoRA. On disk the keys are snake_case under
 * `peft_type: "HYPERLORA"`; the condition vocabulary is part of the config.
 */
export interface HyperLoraConfig extends AdapterConfigBase {
  /** Rank of every generated adapter (default 8). */
  readonly r: number;
  /** LoRA alpha (default 8). */
  readonly loraAlpha: number;
  /** Scale by alpha/√r instead of alpha/r (default false). */
  readonly useRslora: boolean;
  /** The condition: discrete factors or a continuous vector (required). */
  readonly condition: ConditionSpec;
  /** Probability, per row and factor, of replacing a factor by its null embedding in training (default 0; discrete only). */
  readonly conditionDropout: number;
  /** `full` (emit A and B), `basis` (A, B as mixtures of K learned bases; default), `diag` (learned A, B per target with a generated r-diagonal). */
  readonly headMode: HeadMode;
  /** K, the number of bases per module type in `basis` mode (default 8). */
  readonly basisSize: number;
  /** H, the trunk width (default 64). */
  readonly trunkWidth: number;
  /** k, the number of trunk linear layers (default 2). */
  readonly trunkDepth: number;
  /** d_ℓ, the layer-embedding width (default 8). */
  readonly layerEmbeddingDim: number;
  /** d_τ, the module-type-embedding width (default 8). */
  readonly typeEmbeddingDim: number;
  /** The base model's revision, as PEFT records it (default null). */
  readonly revision: string | null;
}

const NAME = /^[A-Za-z0-9_-]+$/u;

const factorSchema = z
  .object({
    name: z.string().regex(NAME, 'letters, digits, _ or -'),
    values: z.array(z.string().min(1).refine((value) => !/[=,|]/u.test(value), 'no "=", "," or "|"')).min(1),
    dim: z.number().int().positive().default(16),
  })
  .strict();

const conditionSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('discrete'), factors: z.array(factorSchema).min(1) }).strict(),
  z.object({ kind: z.literal('continuous'), size: z.number().int().positive(), dim: z.number().int().positive().default(16) }).strict(),
]);

const hyperConfigShape = {
  ...adapterBaseShape,
  r: z.number().int().positive().default(8),
  loraAlpha: z.number().positive().default(8),
  useRslora: z.boolean().default(false),
  condition: conditionSchema,
  conditionDropout: z.number().min(0).lt(1).default(0),
  headMode: z.enum(['full', 'basis', 'diag']).default('basis'),
  basisSize: z.number().int().positive().default(8),
  trunkWidth: z.number().int().positive().default(64),
  trunkDepth: z.number().int().positive().default(2),
  layerEmbeddingDim: z.number().int().positive().default(8),
  typeEmbeddingDim: z.number().int().positive().default(8),
  revision: z.string().nullable().default(null),
} as const;

const hyperConfigSchema = z.object(hyperConfigShape).strict().superRefine(refineTargetSelection);

/** Names of every HyperLoRA config field (camelCase). */
export const HYPERLORA_CONFIG_FIELDS: readonly string[] = Object.keys(hyperConfigShape);

const CONDITION_HINT =
  "A condition is e.g. { kind: 'discrete', factors: [{ name: 'task', values: ['qa', 'summary'] }] } or { kind: 'continuous', size: 16 }.";

const EXAMPLES: Readonly<Record<string, string>> = {
  r: '8',
  loraAlpha: '16',
  conditionDropout: '0.1',
  headMode: "'basis'",
  basisSize: '8',
  trunkWidth: '64',
  trunkDepth: '2',
  targetModules: "['q_proj', 'v_proj']",
};

/**
 * Validate HyperLoRA options (camelCase) and fill the defaults.
 * @throws {ConfigError} naming the field, e.g. `[hyper] Invalid config: condition must be …`.
 * @example
 * const config = parseHyperLoraConfig({ r: 4, targetModules: ['c_attn'],
 *   condition: { kind: 'discrete', factors: [{ name: 'task', values: ['qa', 'summary'] }] } });
 */
export function parseHyperLoraConfig(options: unknown): HyperLoraConfig {
  let config: HyperLoraConfig;
  try {
    config = parseConfigWithSchema(hyperConfigSchema, options, { plugin: 'hyper', examples: EXAMPLES }) as HyperLoraConfig;
  } catch (error) {
    // Nested condition fields get one example of a whole condition rather than core's per-field hint.
    if (!(error instanceof ConfigError) || !/^condition(\.|$)/u.test(error.field)) throw error;
    throw new ConfigError({ plugin: 'hyper', field: error.field, received: error.received, expected: error.expected, hint: CONDITION_HINT });
  }
  if (config.condition.kind === 'discrete') {
    const names = config.condition.factors.map((factor) => factor.name);
    const repeated = names.find((name, i) => names.indexOf(name) !== i);
    if (repeated !== undefined) {
      throw new ConfigError({ plugin: 'hyper', field: 'condition.factors', received: names, expected: 'factors with distinct names', hint: `"${repeated}" appears twice; rename one.` });
    }
    for (const factor of config.condition.factors) {
      const value = factor.values.find((v, i) => factor.values.indexOf(v) !== i);
      if (value !== undefined) {
        throw new ConfigError({ plugin: 'hyper', field: `condition.factors.${factor.name}.values`, received: factor.values, expected: 'distinct values', hint: `"${value}" appears twice; list it once.` });
      }
    }
  } else if (config.conditionDropout > 0) {
    throw new ConfigError({
      plugin: 'hyper',
      field: 'conditionDropout',
      received: config.conditionDropout,
      expected: '0 for a continuous condition (dropout replaces discrete factors by their null embedding)',
      hint: 'Pass { conditionDropout: 0 } or use discrete factors.',
    });
  }
  return config;
}

/**
 * Read a `HYPERLORA` `adapter_config.json` object; unknown keys are kept in `extraPeftFields`.
 * @throws {ConfigError} naming the field.
 */
export function hyperLoraConfigFromPeftJson(json: PeftConfigJson): HyperLoraConfig {
  return parseHyperLoraConfig(peftJsonToOptions(json, HYPERLORA_CONFIG_FIELDS));
}

/**
 * Write the config in PEFT's style (snake_case, `inference_mode: true`) with `peft_type: "HYPERLORA"`.
 * The condition (its factors and vocabularies) is written as given; its keys are single words.
 */
export function hyperLoraConfigToPeftJson(config: HyperLoraConfig): PeftConfigJson {
  const { excludeModules, ...rest } = config;
  return optionsToPeftJson(HYPERLORA_PEFT_TYPE, excludeModules === null ? rest : config);
}

/** The LoRA scale s = alpha/r, or alpha/√r with rsLoRA. */
export function hyperLoraScaling(config: Pick<HyperLoraConfig, 'r' | 'loraAlpha' | 'useRslora'>): number {
  return config.useRslora ? config.loraAlpha / Math.sqrt(config.r) : config.loraAlpha / config.r;
}
