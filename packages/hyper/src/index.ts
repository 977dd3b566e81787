// @lora/hyper: the whole public surface.
export { hyper } from './hyper-plugin.js';
export type { HyperPluginOptions } from './hyper-plugin.js';
export { pluginPackage } from './plugin-package.js';
export {
  parseHyperLoraConfig,
  hyperLoraConfigFromPeftJson,
  hyperLoraConfigToPeftJson,
  hyperLoraScaling,
  HYPERLORA_CONFIG_FIELDS,
  HYPERLORA_PEFT_TYPE,
} from './hyper-config.js';
export type { HyperLoraConfig, ConditionSpec, ConditionFactor, DiscreteConditionSpec, ContinuousConditionSpec, HeadMode } from './hyper-config.js';
export { batchConditions, conditionKey, parseConditionText, resolveCondition, ConditionEncoder } from './conditions.js';
export type { Condition, ConditionInput, ConditionBatch, ResolvedCondition, BatchConditionsOptions } from './conditions.js';
export { HyperGenerator, hyperParameterCount, planTargets } from './generator.js';
export type { GeneratedFactors, HyperParameterCount, HyperTarget, ModuleType, TargetPlan } from './generator.js';
export { GeneratedAdapterCache } from './cache.js';
export type { CacheStats } from './cache.js';
export { HyperLoraState, HYPERLORA_STATE_PREFIX, DEFAULT_CACHE_BYTES } from './hyper-state.js';
export type { HyperLoraStateOptions, ForwardFactors, FactorsForOptions } from './hyper-state.js';
export { HyperLoraAdapter } from './hyper-layer.js';
export { exportHyperLoraAsLora, hyperStateToLora, saveHyperLoraAsLora, writeExportedLora } from './hyper-export.js';
export type { ExportedLora, HyperLoraExportOptions, HyperStateExportOptions } from './hyper-export.js';
