// @lora/dora: the whole public surface.
export { dora, isDoraPeftConfig } from './dora-plugin.js';
export type { DoraPluginOptions } from './dora-plugin.js';
export { parseDoraConfig, doraConfigFromPeftJson, doraConfigToPeftJson, DORA_CONFIG_FIELDS, PEFT_CLASSIC_LORA_FIELDS } from './dora-config.js';
export type { DoraConfig } from './dora-config.js';
export { DoraAdapter } from './dora-layer.js';
export type { DoraAdapterOptions } from './dora-layer.js';

export { doubleLora } from './double-lora-plugin.js';
export type { DoubleLoraPluginOptions } from './double-lora-plugin.js';
export {
  parseDoubleLoraConfig,
  doubleLoraConfigFromPeftJson,
  doubleLoraConfigToPeftJson,
  DOUBLE_LORA_CONFIG_FIELDS,
  DOUBLE_LORA_PEFT_TYPE,
} from './double-lora-config.js';
export type { DoubleLoraConfig } from './double-lora-config.js';
export { DoubleLoraAdapter } from './double-lora-layer.js';
export type { DoubleLoraAdapterOptions, LowRankPairOptions } from './double-lora-layer.js';
export { exportDoubleLoraAsLora, saveDoubleLoraAsLora } from './double-lora-export.js';
export type { DoubleLoraExportOptions, ExportedLora } from './double-lora-export.js';
export { pluginPackage } from './plugin-package.js';
