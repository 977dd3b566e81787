import { PLUGIN_SPECIFICATION_VERSION, resolveRankAndAlpha, type AdapterPlugin, type PeftConfigJson } from '@lora/core';
import { doraConfigFromPeftJson, doraConfigToPeftJson, parseDoraConfig, type DoraConfig } from './dora-config.js';
import { DoraAdapter } from './dora-layer.js';

/** Options for the {@link dora} factory. */
export interface DoraPluginOptions {
  /** Seed for adapter initialisation; the adapter's i-th target gets `seed + 2·i` (default: unseeded). */
  readonly seed?: number;
}

/** Whether a saved `adapter_config.json` is a DoRA adapter: `peft_type: "LORA"` with `use_dora: true`. */
export function isDoraPeftConfig(json: PeftConfigJson): boolean {
  return json.peft_type === 'LORA' && json['use_dora'] === true;
}

/**
 * The DoRA adapter plugin: weight-decomposed low-rank adaptation (Liu et al., ICML 2024) exactly as
 * PEFT computes it for `LoraConfig(use_dora=True)`. Registry name `dora`; on disk `peft_type:
 * "LORA"` with `use_dora: true` and a `lora_magnitude_vector` [out] per target, so adapters move
 * between this library and Python PEFT unchanged. Claims saved configs with `use_dora: true`
 * (core's `lora()` claims the others). Composes with `@lora/quant`'s `quant` base transform (QDoRA):
 * the layer only uses the base's `denseWeight()` and `forward`.
 *
 * Config: LoRA's fields (`r`, `loraAlpha`, `loraDropout`, `targetModules`, `rankPattern`, …, see
 * `parseDoraConfig`); `useDora` is implied.
 *
 * @example
 * const registry = createLoraRegistry({ plugins: [lora(), dora()] });
 * const peft = AdapterModel.create(model, { registry, plugin: 'dora', config: { r: 8, loraAlpha: 16, targetModules: ['c_attn'] } });
 */
export function dora(options: DoraPluginOptions = {}): AdapterPlugin<DoraConfig> {
  return {
    specificationVersion: PLUGIN_SPECIFICATION_VERSION,
    kind: 'adapter',
    name: 'dora',
    packageName: '@lora/dora',
    peftType: 'LORA',
    parseConfig: parseDoraConfig,
    fromPeftJson: doraConfigFromPeftJson,
    toPeftJson: doraConfigToPeftJson,
    claimsPeftConfig: isDoraPeftConfig,
    createAdapter({ base, modulePath, config, index }) {
      const { r, alpha } = resolveRankAndAlpha(config, modulePath);
      const seed = options.seed === undefined ? undefined : options.seed + index * 2;
      return new DoraAdapter({
        base,
        r,
        alpha,
        useRslora: config.useRslora,
        dropout: config.loraDropout,
        init: config.initLoraWeights,
        seed,
        modulePath,
      });
    },
  };
}
