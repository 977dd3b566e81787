// @lora/core: the whole public surface.
export { initRuntime, ensureGradients } from './runtime.js';
export type { RuntimeOptions, RuntimeReport, BuiltinBackendName } from './runtime.js';
export type { SimdKernelBuild } from './wasm-simd-matmul.js';
export { useFastWasmMatMul, restoreWasmMatMul, fastWasmMatMulKernels, keptWeightTransposes } from './wasm-matmul.js';
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
  NonFiniteTensorError,
} from './errors.js';
export type { SafetensorsErrorCode, TrainingStopReason } from './errors.js';
export { checkLoadedTensors, checkTensorsToSave, countNonFinite } from './finite.js';
export type { LoadedTensorCheckOptions } from './finite.js';

export { Module, ModuleList } from './module.js';
export type { AdapterInputScope, TensorModule } from './module.js';
export { Linear, applyToLastAxis } from './linear.js';
export type { LinearOptions } from './linear.js';
export { Embedding, LayerNorm, RMSNorm, Dropout } from './layers.js';
export { dropout } from './dropout.js';
export type { DropoutOptions } from './dropout.js';
export { holdsNonFloatWeight, isBaseLayer } from './base-layer.js';
export type { BaseLayer } from './base-layer.js';

export { PLUGIN_SPECIFICATION_VERSION } from './plugin.js';
export type {
  AdapterConfigBase,
  AdapterHookContext,
  AdapterInputs,
  AdapterInstance,
  AdapterPlugin,
  AdapterSaveContext,
  AdapterState,
  ApplyContext,
  BaseTransform,
  LoraPlugin,
  PeftConfigJson,
  PluginDescriptor,
  PluginPackageDescriptor,
  Recipe,
  TargetSelection,
  TrainingHookCheckpoint,
  TrainingHooks,
  TrainingHookState,
} from './plugin.js';
export { definePluginPackage, createDescribedPlugin, findPluginForPeftConfig } from './plugin-package.js';
export { pluginPackage } from './core-plugins.js';
export { createLoraRegistry } from './registry.js';
export type { LoraRegistry, RecipeCheck } from './registry.js';
export { isTargetModule, layerIndexOf, matchPatternKey, isExcludedModule, isCoveredByModulesToSave } from './target-matching.js';

export { lora, resolveRankAndAlpha } from './lora-plugin.js';
export type { LoraPluginOptions } from './lora-plugin.js';
export { parseLoraConfig } from './lora-config.js';
export type { LoraConfig } from './lora-config.js';
export { LoraAdapter, checkBaseShape } from './lora-layer.js';
export type { LoraAdapterOptions } from './lora-layer.js';
export { AdapterLayer, ModulesToSaveWrapper } from './adapter-layer.js';
export type { AdapterLayerHost } from './adapter-layer.js';
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
export { writeFileAtomic, writeJsonAtomic, readSafetensorsFile, writeSafetensorsFile, readJsonFile, syncDirectory } from './files.js';
export {
  ADAPTER_CONFIG_NAME,
  ADAPTER_WEIGHTS_NAME,
  adapterPeftConfig,
  adapterStateDict,
  isAdapterDirectory,
  loadAdapter,
  loadAdapterModel,
  readAdapterConfig,
  readBinarySource,
  saveAdapter,
  serializeAdapter,
  serializeAdapterAsync,
} from './adapter-files.js';
export type { AdapterFileSource, BinarySource, LoadAdapterOptions } from './adapter-files.js';

export { AdamW, float32Moments, LEARNING_RATE_SCHEDULES, learningRateAt } from './optimizer.js';
export type { AdamWOptions, LearningRateSchedule, MomentEncoding, MomentStore, OptimizerSnapshot, TrainOptimizer } from './optimizer.js';
export { train, evaluate, evaluateAsync, readCheckpointStep, TRAINER_CHECKPOINT_NAME } from './trainer.js';
export type { TrainingTarget } from './training-target.js';
export type { BatchSource, TrainOptions, TrainResult, TrainingProgress } from './trainer.js';
export { causalLmLoss, classificationLoss, IGNORE_INDEX } from './losses.js';
