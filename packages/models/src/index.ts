// @lora/models: the whole public surface.
export { PretrainedModel, CausalLanguageModel } from './pretrained-model.js';
export type { ArchitectureName, CausalLmForwardOptions, LayerSlot } from './pretrained-model.js';
export { OutputHead } from './output-head.js';
export { KeyValueCache, MASK_VALUE, causalMaskBias, paddingMaskBias, releaseCausalMasks, scaledDotProductAttention } from './attention.js';
export type { AttentionOptions } from './attention.js';
export { ACTIVATION_NAMES, activationFunction, geluExact, geluTanh, isActivationName, silu } from './activations.js';
export type { ActivationName } from './activations.js';

export { parseGpt2Config, gpt2ConfigJson } from './gpt2-config.js';
export type { Gpt2Config } from './gpt2-config.js';
export { Gpt2LMHeadModel, Gpt2Model, Gpt2Block, Gpt2Attention, Gpt2Mlp } from './gpt2-model.js';
export { parseLlamaConfig, llamaConfigJson } from './llama-config.js';
export type { LlamaConfig, RopeScaling } from './llama-config.js';
export { LlamaForCausalLM, LlamaModel, LlamaDecoderLayer, LlamaAttention, LlamaMlp } from './llama-model.js';
export { rotaryInverseFrequencies } from './rotary.js';
export { parseBertConfig, bertConfigJson } from './bert-config.js';
export type { BertConfig } from './bert-config.js';
export {
  BertModel,
  BertForSequenceClassification,
  BertEmbeddings,
  BertEncoder,
  BertLayer,
  BertAttention,
  BertSelfAttention,
  BertResidualOutput,
  BertIntermediate,
  BertPooler,
} from './bert-model.js';
export type { BertForwardOptions } from './bert-model.js';

export {
  ARCHITECTURES,
  CONFIG_NAME,
  WEIGHTS_NAME,
  WEIGHTS_INDEX_NAME,
  architectureOf,
  createModel,
  loadPretrained,
  loadCausalLanguageModel,
  readCheckpointTensors,
  savePretrained,
} from './pretrained.js';
export type { AnyPretrainedModel, ArchitectureModels, CreateModelOptions, LoadPretrainedOptions, SavePretrainedOptions } from './pretrained.js';
export { loadStateDict, stateDict } from './state-dict.js';
export type { LoadReport, LoadStateDictOptions } from './state-dict.js';

export { ByteTokenizer, HuggingFaceTokenizer, loadTokenizer, BYTE_TOKENIZER_CLASS } from './tokenizer.js';
export type { TextTokenizer, EncodeOptions, DecodeOptions, HuggingFaceTokenizerObject } from './tokenizer.js';
export { DatasetError, TokenizerError } from './errors.js';
export {
  parseJsonl,
  readJsonl,
  parseCsv,
  readCsv,
  trainValidationSplit,
  padBatch,
  makeBatches,
  batchTensors,
  causalLmWindows,
} from './datasets.js';
export type { TextExample, JsonlOptions, CsvOptions, SplitOptions, PaddedBatch, PaddingOptions } from './datasets.js';
export { loadMobyDick, mobyDickText, mobyDickSplits, MOBY_DICK_HELD_OUT_FRACTION, loadStateOfTheUnion, loadSpamAssassin } from './corpora.js';
export type { MobyDickChapter, StateOfTheUnionSpeech, SpamAssassinMessage } from './corpora.js';
export { seededRandom, shuffled } from './random.js';
export { generate, generateAsync, pickToken } from './generate.js';
export type { GenerateOptions } from './generate.js';
export { evaluatePerplexity, unigramPerplexity } from './perplexity.js';
export type { PerplexityResult } from './perplexity.js';
export { BUNDLED_BASE_PACKAGE, bundledBaseDirectory, loadBundledBase, type LoadBundledBaseOptions } from './bundled-base.js';
