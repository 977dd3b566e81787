import { PLUGIN_SPECIFICATION_VERSION, type AdapterPlugin } from '@lora/core';
import {
  DOUBLE_LORA_PEFT_TYPE,
  doubleLoraConfigFromPeftJson,
  doubleLoraConfigToPeftJson,
  parseDoubleLoraConfig,
  type DoubleLoraConfig,
} from './double-lora-config.js';
import { DoubleLoraAdapter } from './double-lora-layer.js';

/** Options for the {@link doubleLora} factory. */
export interface DoubleLoraPluginOptions {
  /** Seed for adapter initialisation; the adapter's i-th target gets `seed + 4·i` (default: unseeded). */
  readonly seed?: number;
}

/**
 * The double low-rank plugin (registry name `double-lora`): two independent LoRA pairs per target,
 * ΔW = s₁·B₁A₁ + s₂·B₂A₂, with their own ranks, alphas and dropout. This is the "DoRA as two
 * low-rank updates" of our variant guide, offered under its own name because it is **not** the
 * DoRA of Liu et al. (use {@link dora} for that).
 *
 * Its capacity is exactly that of one LoRA of rank r₁ + r₂ (`exportDoubleLoraAsLora` converts it,
 * with identical outputs). The split is useful when the pairs train differently: a different
 * dropout per pair, or a different learning rate per pair (e.g. a small fast pair and a large slow
 * one). Saved as `peft_type: "DOUBLE_LORA"` with keys `lora_A1.weight`, `lora_B1.weight`,
 * `lora_A2.weight`, `lora_B2.weight`; Python PEFT cannot read that, but it reads the export.
 *
 * @example
 * const registry = createLoraRegistry({ plugins: [lora(), doubleLora()] });
 * const peft = AdapterModel.create(model, {
 *   registry,
 *   plugin: 'double-lora',
 *   config: { r1: 8, loraAlpha1: 16, r2: 2, loraAlpha2: 2, loraDropout2: 0.1, targetModules: ['q_proj', 'v_proj'] },
 * });
 */
export function doubleLora(options: DoubleLoraPluginOptions = {}): AdapterPlugin<DoubleLoraConfig> {
  return {
    specificationVersion: PLUGIN_SPECIFICATION_VERSION,
    kind: 'adapter',
    name: 'double-lora',
    packageName: '@lora/dora',
    peftType: DOUBLE_LORA_PEFT_TYPE,
    parseConfig: parseDoubleLoraConfig,
    fromPeftJson: doubleLoraConfigFromPeftJson,
    toPeftJson: doubleLoraConfigToPeftJson,
    claimsPeftConfig: (json) => json.peft_type === DOUBLE_LORA_PEFT_TYPE,
    savedRank: (shapes) => (shapes.get('lora_A1.weight')?.[0] ?? 0) + (shapes.get('lora_A2.weight')?.[0] ?? 0),
    createAdapter({ base, config, index }) {
      const seed = options.seed === undefined ? undefined : options.seed + index * 4;
      return new DoubleLoraAdapter({
        inFeatures: base.inFeatures,
        outFeatures: base.outFeatures,
        first: { r: config.r1, alpha: config.loraAlpha1, dropout: config.loraDropout1 },
        second: { r: config.r2, alpha: config.loraAlpha2, dropout: config.loraDropout2 },
        useRslora: config.useRslora,
        init: config.initLoraWeights,
        seed,
      });
    },
  };
}
