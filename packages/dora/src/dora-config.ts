import { ConfigError, type LoraConfig, type PeftConfigJson } from '@lora/core';
import {
  LORA_CONFIG_EXAMPLES,
  loraConfigShape,
  optionsToPeftJson,
  parseConfigWithSchema,
  peftJsonToOptions,
  refineTargetSelection,
} from '@lora/core/internal';
import { z } from 'zod';

/**
 * DoRA's config: PEFT's `LoraConfig` with `use_dora: true` (DoRA is not a PEFT type of its own; on
 * disk it is `peft_type: "LORA"` with `use_dora: true`). Every other field has LoRA's meaning and
 * default: `r` 8, `loraAlpha` 8, `loraDropout` 0, `useRslora` false, `initLoraWeights` true, ….
 */
export interface DoraConfig extends LoraConfig {
  /** Always true for DoRA. */
  readonly useDora: true;
}

const doraConfigShape = {
  ...loraConfigShape,
  useDora: z.literal(true).default(true),
} as const;

const doraConfigSchema = z.object(doraConfigShape).strict().superRefine(refineTargetSelection);

/** Names of every DoRA config field (camelCase): the LoRA fields. */
export const DORA_CONFIG_FIELDS: readonly string[] = Object.keys(doraConfigShape);

/**
 * Keys PEFT 0.10 (the first release writing DoRA files PEFT still reads) writes in every LoRA
 * `adapter_config.json`, with their defaults. A config created here (not loaded from a file) gets
 * them so the saved file has PEFT's key set; a loaded config keeps the values it was read with.
 */
export const PEFT_CLASSIC_LORA_FIELDS: Readonly<Record<string, unknown>> = {
  auto_mapping: null,
  layer_replication: null,
  loftq_config: {},
  megatron_config: null,
  megatron_core: 'megatron.core',
};

/**
 * Validate DoRA options (camelCase) and fill PEFT's defaults.
 *
 * @param options - As `LoraConfig` in `@lora/core`; `useDora` may be omitted (it is always true).
 * @throws {ConfigError} naming the field, e.g. `[dora] Invalid config: r must be > 0, got 0. Pass e.g. { r: 8 }.`;
 *   `useDora: false` is refused with a pointer to `lora()` from `@lora/core`.
 * @example
 * const config = parseDoraConfig({ r: 8, loraAlpha: 16, targetModules: ['q_proj', 'v_proj'] });
 */
export function parseDoraConfig(options: unknown): DoraConfig {
  const useDora = options !== null && typeof options === 'object' ? (options as Record<string, unknown>)['useDora'] : undefined;
  if (useDora !== undefined && useDora !== true) {
    throw new ConfigError({
      plugin: 'dora',
      field: 'useDora',
      received: useDora,
      expected: 'true (or left out)',
      hint: 'For plain LoRA use lora() from @lora/core instead of dora().',
    });
  }
  const parsed = parseConfigWithSchema(doraConfigSchema, options, { plugin: 'dora', examples: LORA_CONFIG_EXAMPLES });
  const { loraBias: _loraBias, ...config } = parsed;
  return config as DoraConfig;
}

/**
 * Read a DoRA `adapter_config.json` object (`peft_type: "LORA"`, `use_dora: true`); keys it does not
 * interpret are kept in `extraPeftFields` and written back on save.
 * @throws {ConfigError} naming the field.
 * @example
 * const config = doraConfigFromPeftJson(JSON.parse(await readFile('adapter_config.json', 'utf8')));
 */
export function doraConfigFromPeftJson(json: PeftConfigJson): DoraConfig {
  const config = parseDoraConfig(peftJsonToOptions(json, DORA_CONFIG_FIELDS));
  // `lora_bias` (PEFT >= 0.14) is validated (DoRA needs false) but not a config field here; keep it
  // so that saving again writes the file's key set back.
  if (!('lora_bias' in json)) return config;
  return { ...config, extraPeftFields: { ...config.extraPeftFields, lora_bias: json['lora_bias'] } };
}

/**
 * Write a DoRA config as PEFT does: `peft_type: "LORA"`, `use_dora: true`, snake_case keys sorted,
 * `inference_mode: true`. `exclude_modules` is written only when set, because PEFT before 0.14
 * rejects unknown keys; PEFT 0.10's classic keys are filled in when absent.
 * @example
 * const json = doraConfigToPeftJson(parseDoraConfig({ r: 8, targetModules: ['q_proj'] })); // json.use_dora === true
 */
export function doraConfigToPeftJson(config: DoraConfig): PeftConfigJson {
  const { excludeModules, ...rest } = config;
  const withClassic = { ...(excludeModules === null ? rest : config), extraPeftFields: { ...PEFT_CLASSIC_LORA_FIELDS, ...config.extraPeftFields } };
  return optionsToPeftJson('LORA', withClassic);
}
