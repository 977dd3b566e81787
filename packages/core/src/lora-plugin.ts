import { ConfigError } from './errors.js';
import { optionsToPeftJson, peftJsonToOptions } from './config-helpers.js';
import { LORA_CONFIG_FIELDS, parseLoraConfig, type LoraConfig } from './lora-config.js';
import { LoraAdapter } from './lora-layer.js';
import { PLUGIN_SPECIFICATION_VERSION, type AdapterPlugin, type PeftConfigJson } from './plugin.js';
import { matchPatternKey } from './target-matching.js';

/** Options for the {@link lora} factory. */
export interface LoraPluginOptions {
  /** Seed for adapter initialisation; the adapter's i-th target gets `seed + 2·i` (default: unseeded). */
  readonly seed?: number;
}

/** Per-module rank and alpha after `rankPattern` / `alphaPattern`, as PEFT resolves them. */
export function resolveRankAndAlpha(config: LoraConfig, modulePath: string): {
  /** The module's rank: its `rankPattern` entry, else `config.r`. */
  r: number;
  /** The module's alpha (PEFT's `lora_alpha`): its `alphaPattern` entry, else `config.loraAlpha`. */
  alpha: number;
} {
  const rankKey = matchPatternKey(config.rankPattern, modulePath);
  const alphaKey = matchPatternKey(config.alphaPattern, modulePath);
  return {
    r: rankKey === undefined ? config.r : config.rankPattern[rankKey]!,
    alpha: alphaKey === undefined ? config.loraAlpha : config.alphaPattern[alphaKey]!,
  };
}

/**
 * The LoRA adapter plugin (PEFT's `LoraConfig`, `peft_type: "LORA"`). Composes with 4-bit base
 * weights from `@lora/quant` (QLoRA).
 *
 * @example
 * const registry = createLoraRegistry({ plugins: [lora()] });
 */
export function lora(options: LoraPluginOptions = {}): AdapterPlugin<LoraConfig> {
  return {
    specificationVersion: PLUGIN_SPECIFICATION_VERSION,
    kind: 'adapter',
    name: 'lora',
    packageName: '@lora/core',
    peftType: 'LORA',
    parseConfig(input) {
      const config = parseLoraConfig(input);
      if (config.useDora) {
        throw new ConfigError({
          plugin: 'lora',
          field: 'useDora',
          received: true,
          expected: 'false for plain LoRA',
          hint: "DoRA is the 'dora' adapter plugin, not lora(): register it and create the adapter with plugin: 'dora'.",
        });
      }
      return config;
    },
    fromPeftJson(json: PeftConfigJson) {
      if (json['lora_bias'] === true) {
        throw new ConfigError({ plugin: 'lora', field: 'lora_bias', received: true, expected: 'false (a bias on lora_B is not supported yet)' });
      }
      // lora_bias (PEFT >= 0.14) is kept verbatim so saving again writes the same keys.
      return this.parseConfig(peftJsonToOptions(json, LORA_CONFIG_FIELDS.filter((field) => field !== 'loraBias')));
    },
    toPeftJson(config) {
      // PEFT before 0.14 rejects unknown keys: write exclude_modules only when set.
      const { excludeModules, ...rest } = config;
      return optionsToPeftJson('LORA', excludeModules === null ? rest : config);
    },
    claimsPeftConfig(json) {
      return json.peft_type === 'LORA' && json['use_dora'] !== true;
    },
    createAdapter({ base, modulePath, config, index }) {
      const { r, alpha } = resolveRankAndAlpha(config, modulePath);
      // Seeds follow the target's index, so the same seed gives the same adapter bytes every time.
      const seed = options.seed === undefined ? undefined : options.seed + index * 2;
      return new LoraAdapter({
        inFeatures: base.inFeatures,
        outFeatures: base.outFeatures,
        r,
        alpha,
        useRslora: config.useRslora,
        dropout: config.loraDropout,
        init: config.initLoraWeights,
        seed,
      });
    },
  };
}
