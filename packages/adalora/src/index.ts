// @lora/adalora: the whole public surface.
export { adalora, adaLoraAllocator, adaLoraRankHistory, adaLoraRankPattern } from './adalora-plugin.js';
export type { AdaLoraPluginOptions } from './adalora-plugin.js';
export { parseAdaLoraConfig, adaLoraConfigFromPeftJson, adaLoraConfigToPeftJson, ADALORA_CONFIG_FIELDS } from './adalora-config.js';
export type { AdaLoraConfig, AdaLoraGrowthOptions, OrthogonalRegularizer } from './adalora-config.js';
export { AdaLoraAdapter, isAdaLoraAdapter } from './adalora-layer.js';
export type { AdaLoraAdapterOptions, AdaLoraFactors, RankPatternForm } from './adalora-layer.js';
export { RankAllocator, budgetSchedule } from './rank-allocator.js';
export type {
  AllocationPhase,
  AllocationResult,
  BudgetScheduleOptions,
  RankAllocatorOptions,
  RankHistory,
  RankHistoryEntry,
} from './rank-allocator.js';
export { orthogonalRegularization } from './orthogonal-regularizer.js';
export type { OrthogonalRegularizationOptions } from './orthogonal-regularizer.js';
export { saveAdaLoraAdapter } from './adalora-files.js';
export { formatRankTable, renderRankChart, renderRankSvg } from './rank-report.js';
export type { RankChartOptions, RankSvgOptions, RankTableOptions } from './rank-report.js';
export { pluginPackage } from './plugin-package.js';
