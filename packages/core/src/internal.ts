// Helpers shared by @lora/* packages. Not part of the public API: may change in any release.
export {
  adapterBaseShape,
  camelToSnake,
  optionsToPeftJson,
  parseConfigWithSchema,
  peftJsonToOptions,
  refineTargetSelection,
  snakeToCamel,
  targetSelectionShape,
} from './config-helpers.js';
export { inMemoryTensorName } from './adapter-layer.js';
export { describeValue } from './errors.js';
export { thinSvd } from './svd.js';
export { loraConfigShape, LORA_CONFIG_EXAMPLES, LORA_CONFIG_FIELDS } from './lora-config.js';
export { normalSeed, seededRandom } from './random.js';
export { assertTensorsFit, compareTensorShapes, sameShape } from './tensor-fit.js';
export type { TensorFit } from './tensor-fit.js';
export { replaceLayers } from './layer-replacement.js';
export { faultPoint, parseJsonText, pathExists, setFaultInjector } from './files.js';
export { fileHost, setFileHost } from './file-host.js';
export type { FileHost } from './file-host.js';
export { yieldToEventLoop } from './event-loop.js';
export { hostReadIsCheap } from './host-reads.js';
export { addMany } from './add-many.js';
export { checkOptionNames, PYTORCH_ADAMW_RENAMES } from './option-names.js';
export type { OptionNames } from './option-names.js';
export { ADAMW_NUMBER_OPTIONS } from './optimizer.js';
export { tensorFilledBy } from './filled-tensor.js';
export { dequantized4bitTensor } from './dequantized-tensor.js';
export { sensitivityUpdate, SENSITIVITY_UPDATE_KERNEL } from './sensitivity-update.js';
export type { Packed4bit } from './dequantized-tensor.js';
export { hookStateError } from './hook-checkpoint.js';
export type { FaultInjector, FaultPoint } from './files.js';
export { deriveSeed, withSeededRandom } from './random-scope.js';
export { matMulFlops, spyOnKernels } from './kernel-spy.js';
export {
  LORA_BACKWARD_KERNEL,
  LORA_FORWARD_KERNEL,
  LORA_LINEAR_BACKWARD_KERNEL,
  LORA_LINEAR_DROPOUT_FORWARD_KERNEL,
  LORA_LINEAR_FORWARD_KERNEL,
  lowRankLinearTrain,
} from './low-rank-train.js';
export type { LowRankLinearBase } from './low-rank-train.js';
export { hasSimdBatchMatMul, setSimdBatchMatMulHelperMode, simdBatchMatMulHelper, simdKernelBuild } from './wasm-simd-matmul.js';
export type { SimdBatchMatMulHelperMode, SimdKernelBuild } from './wasm-simd-matmul.js';
export { setThreadHost, threadHost } from './thread-host.js';
export type { HelperThread, ThreadHost } from './thread-host.js';
export { withPlainMemoryImport, withSharedMemoryImport } from './wasm-module.js';
export { fusedBiasProductIsSafe } from './wasm-matmul.js';
export { geluTanh, GELU_TANH_GRAD_KERNEL, GELU_TANH_KERNEL } from './gelu-tanh.js';
export { geluErf, GELU_ERF_GRAD_KERNEL, GELU_ERF_KERNEL } from './gelu-erf.js';
export { silu, SILU_GRAD_KERNEL, SILU_KERNEL } from './silu.js';
export { rotaryEmbedding, ROTARY_KERNEL } from './rotary-embedding.js';
export { scaledSoftmax, SCALED_SOFTMAX_GRAD_KERNEL, SCALED_SOFTMAX_KERNEL } from './scaled-softmax.js';
export { CAUSAL_MIX_KERNEL, CAUSAL_SCORES_KERNEL, causalMix, causalScores } from './causal-products.js';
export {
  CAUSAL_ATTENTION_GRAD_KERNEL,
  CAUSAL_ATTENTION_KERNEL,
  CAUSAL_SELF_ATTENTION_GRAD_KERNEL,
  CAUSAL_SELF_ATTENTION_KERNEL,
  causalAttention,
  causalSelfAttention,
} from './causal-attention.js';
export type { CausalAttentionOptions } from './causal-attention.js';
export { ATTENTION_GRAD_KERNEL, ATTENTION_KERNEL, bidirectionalAttention } from './bidirectional-attention.js';
export type { KernelCall, KernelSpy } from './kernel-spy.js';
export { loraFactorTensors, writeExportedLora } from './lora-export.js';
export type { ExportedLora, ExportedLoraWriteOptions, LoraFactors } from './lora-export.js';
