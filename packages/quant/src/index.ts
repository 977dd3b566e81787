// @lora/quant: the whole public surface.
export {
  NF4_CODE,
  NF4_THRESHOLDS,
  FP4_CODE,
  DYNAMIC_MAP_SIGNED,
  DYNAMIC_MAP_UNSIGNED,
  codebookFor,
  createDynamicMap,
  dynamicCodeOf,
  fp4CodeOf,
  maxHalfGap,
  nf4CodeOf,
} from './codebooks.js';
export type { QuantType } from './codebooks.js';

export { VALID_BLOCK_SIZES, quantize4bit, dequantize4bit, quantizeBlockwise8bit, dequantizeBlockwise8bit } from './blockwise.js';
export type { Quantized4bit, Quantized8bit } from './blockwise.js';

export { quantizeWeight, dequantizeWeight, doubleQuantizeAbsmax, absmaxOf, quantStateBytes } from './quant-state.js';
export type { QuantState, NestedQuantState, QuantizeWeightOptions, QuantStateBytes } from './quant-state.js';

export { parseQuantOptions, toBitsAndBytesConfig, fromBitsAndBytesConfig } from './quant-config.js';
export type { QuantOptions, QuantConfig, ComputeDtype, QuantMergeMode, BitsAndBytesConfigJson, FromBitsAndBytesConfigOptions } from './quant-config.js';

export { QuantLinear, isQuantLinear } from './quant-layer.js';
export type { QuantLinearOptions } from './quant-layer.js';
export { quant, shouldQuantize } from './quant-plugin.js';
export type { QuantTransform } from './quant-plugin.js';
export { quantizeModel, dequantizeModel, mergeAndDequantize } from './quant-model.js';

export { QuantStateError } from './errors.js';
export { quantStateBlob, quantStateToEntries, quantStateFromEntries, findQuantizedModules } from './bnb-format.js';
export {
  MODEL_CONFIG_NAME,
  MODEL_WEIGHTS_NAME,
  MODEL_WEIGHTS_INDEX_NAME,
  quantizedStateDict,
  loadQuantizedStateDict,
  saveQuantizedModel,
  saveQuantizedPretrained,
  loadQuantizedModel,
} from './checkpoint.js';
export type {
  QuantizedStateDictOptions,
  LoadQuantizedOptions,
  LoadQuantizedResult,
  SaveQuantizedPretrainedOptions,
  SaveQuantizedModelOptions,
  LoadQuantizedModelOptions,
  LoadedQuantizedModel,
} from './checkpoint.js';

export { AdamW8bit } from './adamw-8bit.js';
export type { AdamW8bitOptions } from './adamw-8bit.js';
export { memoryReport, measurePeakTensorBytes } from './memory.js';
export type { QuantMemoryReport, PeakTensorBytes, MeasurableOptimizer } from './memory.js';
export { pluginPackage } from './plugin-package.js';
