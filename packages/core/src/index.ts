// @lora/core: the whole public surface.
export { initRuntime, ensureGradients } from './runtime.js';
export type { RuntimeOptions, RuntimeReport, BuiltinBackendName } from './runtime.js';
export { useFastWasmMatMul, restoreWasmMatMul, fastWasmMatMulKernels, keptWeightTransposes, MIN_FLOPS_PER_MATRIX } from './wasm-matmul.js';
export { useFastWasmKernels, restoreWasmKernels, fastWasmKernels } from './wasm-kernels.js';
export { registerMissingGradientKernels } from './kernels.js';

export {
  LoraError,
  ConfigError,
  SafetensorsError,
  RegistryError,
  CheckpointError,
  ModuleError,
  TrainingError,
  ShapeError,
} from './errors.js';
export type { SafetensorsErrorCode } from './errors.js';

export { Module, ModuleList } from './module.js';
export type { TensorModule } from './module.js';
export { Linear, applyToLastAxis } from './linear.js';
export type { LinearOptions } from './linear.js';
export { Embedding, LayerNorm, RMSNorm, Dropout, dropout } from './layers.js';
export { isBaseLayer } from './base-layer.js';
export type { BaseLayer } from './base-layer.js';

export { PLUGIN_SPECIFICATION_VERSION } from './plugin.js';
export type {
  AdapterConfigBase,
  AdapterHookContext,
  AdapterInstance,
  AdapterPlugin,
  ApplyContext,
  BaseTransform,
  LoraPlugin,
  PeftConfigJson,
  Recipe,
  TargetSelection,
  TrainingHooks,
} from './plugin.js';
export { createLoraRegistry, KNOWN_PLUGIN_PACKAGES } from './registry.js';
export type { LoraRegistry, RecipeCheck } from './registry.js';
export { isTargetModule, layerIndexOf, matchPatternKey, isExcludedModule, isCoveredByModulesToSave } from './target-matching.js';

export { lora, resolveRankAndAlpha } from './lora-plugin.js';
export type { LoraPluginOptions } from './lora-plugin.js';
export { parseLoraConfig } from './lora-config.js';
export type { LoraConfig } from './lora-config.js';
export { LoraAdapter, checkBaseShape } from './lora-layer.js';
export type { LoraAdapterOptions } from './lora-layer.js';
export { AdapterLayer, ModulesToSaveWrapper, isCloneable } from './adapter-layer.js';
export type { CloneableModule } from './adapter-layer.js';
export { AdapterModel } from './adapter-model.js';
export type { AdapterTargetHints, CreateAdapterModelOptions, TrainableParameterReport, WeightedAdapterOptions } from './adapter-model.js';

export {
  parseSafetensors,
  serializeSafetensors,
  entryToFloat32,
  entryToInt32,
  entryToTensor,
  tensorToEntry,
  float32Entry,
} from './safetensors.js';
export type { SafetensorsDtype, SafetensorsEntry, SafetensorsFile } from './safetensors.js';
export { writeFileAtomic, writeJsonAtomic, readSafetensorsFile, writeSafetensorsFile, readJsonFile } from './files.js';
export {
  ADAPTER_CONFIG_NAME,
  ADAPTER_WEIGHTS_NAME,
  adapterPeftConfig,
  adapterStateDict,
  isAdapterDirectory,
  loadAdapter,
  loadAdapterModel,
  readAdapterConfig,
  saveAdapter,
} from './adapter-files.js';
export type { LoadAdapterOptions } from './adapter-files.js';

export { AdamW, learningRateAt } from './optimizer.js';
export type { AdamWOptions, LearningRateSchedule, TrainOptimizer } from './optimizer.js';
export { train, evaluate } from './trainer.js';
export type { BatchSource, TrainOptions, TrainResult, TrainingProgress } from './trainer.js';
export { causalLmLoss, classificationLoss, IGNORE_INDEX } from './losses.js';
