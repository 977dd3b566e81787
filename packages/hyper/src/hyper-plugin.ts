import { ConfigError, LoraError, PLUGIN_SPECIFICATION_VERSION, type AdapterPlugin, type PeftConfigJson } from '@lora/core';
import { checkCacheBytes } from './cache.js';
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
  /** Seed of the generator's initialisation and of condition dropout, an integer; adapter k gets `seed + 10000·k` (default 0). */
  readonly seed?: number;
  /** Inference-cache budget per adapter, a whole number of bytes (default 64 MiB; 0 disables the cache). */
  readonly cacheBytes?: number;
}

const OPTION_NAMES: readonly string[] = ['seed', 'cacheBytes'];

/** Check the factory's options: an object with only known keys, an integer seed, a whole number of bytes. */
function checkOptions(options: unknown): HyperPluginOptions {
  if (options === undefined) return {};
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError({ plugin: 'hyper', field: 'options', received: options, expected: 'an object { seed?, cacheBytes? }', hint: 'Call e.g. hyper({ seed: 1 }) or hyper().' });
  }
  const record = options as Readonly<Record<string, unknown>>;
  for (const key of Object.keys(record)) {
    if (!OPTION_NAMES.includes(key)) {
      throw new ConfigError({ plugin: 'hyper', field: key, received: record[key], expected: `a known option of hyper() (${OPTION_NAMES.join(', ')}; check the spelling)` });
    }
  }
  const seed = record['seed'];
  if (seed !== undefined && !(typeof seed === 'number' && Number.isSafeInteger(seed))) {
    throw new ConfigError({ plugin: 'hyper', field: 'seed', received: seed, expected: 'an integer', hint: 'Pass e.g. hyper({ seed: 1 }).' });
  }
  if (record['cacheBytes'] !== undefined) checkCacheBytes(record['cacheBytes']);
  return record as HyperPluginOptions;
}

/**
 * The HyperLoRA adapter plugin (`peft_type: "HYPERLORA"`): one generator per adapter, kept in the
 * adapter-level state and saved once, produces every target's A and B from the condition given
 * with each forward pass (`adapterModel.withAdapterInputs({ condition }, () => model.forward(ids))`).
 * A forward pass without a condition throws a `ConfigError` saying how to pass one, unless the
 * adapter has a default (`peft.adapterState(name).setDefaultCondition(…)`); `{ condition: {} }`
 * asks for every factor at its learned null embedding. The generator is freed by `peft.dispose()`,
 * and also by `model.dispose()` on the wrapped model (the state goes with its last layer).
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
 *
 * @throws {ConfigError} naming the option: an unknown option, a seed that is not an integer, a
 *   `cacheBytes` that is not a whole number >= 0 (e.g. `'64MB'` or -1).
 */
export function hyper(options: HyperPluginOptions = {}): AdapterPlugin<HyperLoraConfig> {
  options = checkOptions(options);
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
