import { LoraError, PLUGIN_SPECIFICATION_VERSION, type AdapterPlugin, type PeftConfigJson } from '@lora/core';
import {
  HYPERLORA_PEFT_TYPE,
  hyperLoraConfigFromPeftJson,
  hyperLoraConfigToPeftJson,
  parseHyperLoraConfig,
  type HyperLoraConfig,
} from './hyper-config.js';
import { HyperLoraAdapter } from './hyper-layer.js';
import { HyperLoraState } from './hyper-state.js';

/** Options for the {@link hyper} factory. */
export interface HyperPluginOptions {
  /** Seed of the generator's initialisation and of condition dropout; adapter k gets `seed + 10000·k` (default 0). */
  readonly seed?: number;
  /** Inference-cache budget per adapter in bytes (default 64 MiB; 0 disables the cache). */
  readonly cacheBytes?: number;
}

/**
 * The HyperLoRA adapter plugin (`peft_type: "HYPERLORA"`): one generator per adapter, kept in the
 * adapter-level state and saved once, produces every target's A and B from the condition given
 * with each forward pass (`adapterModel.withAdapterInputs({ condition }, () => model.forward(ids))`).
 * Composes with every base transform (tested with `@lora/quant`'s 4-bit base). It does not merge
 * (ΔW depends on the condition): `merge()` throws a `LoraError`; export one condition with
 * `exportHyperLoraAsLora` and merge that plain LoRA.
 *
 * @example
 * const registry = createLoraRegistry({ plugins: [lora(), hyper({ seed: 1 })] });
 * const peft = AdapterModel.create(model, { registry, plugin: 'hyper', config: {
 *   r: 8, targetModules: ['c_attn'],
 *   condition: { kind: 'discrete', factors: [{ name: 'task', values: ['qa', 'summary'] }] } } });
 * const logits = peft.withAdapterInputs({ condition: { task: 'qa' } }, () => model.forward(ids));
 */
export function hyper(options: HyperPluginOptions = {}): AdapterPlugin<HyperLoraConfig> {
  let created = 0;
  return {
    specificationVersion: PLUGIN_SPECIFICATION_VERSION,
    kind: 'adapter',
    name: 'hyper',
    packageName: '@lora/hyper',
    peftType: HYPERLORA_PEFT_TYPE,
    parseConfig: parseHyperLoraConfig,
    fromPeftJson: hyperLoraConfigFromPeftJson,
    toPeftJson: (config) => hyperLoraConfigToPeftJson(config),
    claimsPeftConfig: (json: PeftConfigJson) => json.peft_type === HYPERLORA_PEFT_TYPE,
    createAdapterState({ adapterName, config, targets }) {
      const seed = (options.seed ?? 0) + 10000 * created;
      created += 1;
      return new HyperLoraState({ adapterName, config, targets, seed, cacheBytes: options.cacheBytes });
    },
    createAdapter({ modulePath, adapterName, state }) {
      if (!(state instanceof HyperLoraState)) {
        throw new LoraError(
          `[@lora/hyper] The HyperLoRA adapter "${adapterName}" at ${modulePath} has no generator state; create it through AdapterModel (core's plugin interface v2).`,
          { plugin: 'hyper' },
        );
      }
      return new HyperLoraAdapter({ state, modulePath });
    },
  };
}
