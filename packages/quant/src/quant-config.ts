import { ConfigError } from '@lora/core';
import { VALID_BLOCK_SIZES } from './blockwise.js';
import type { QuantType } from './codebooks.js';

/** Dtypes accepted for `computeDtype` (tfjs computes in float32 whatever is chosen; see {@link QuantConfig}). */
export type ComputeDtype = 'float32' | 'bfloat16' | 'float16';

/** What merging an adapter into a 4-bit layer does. */
export type QuantMergeMode = 'requantize' | 'dequantize';

/** Options of {@link quant} and {@link quantizeModel} (all optional; defaults are QLoRA's). */
export interface QuantOptions {
  /** 4-bit data type (default `nf4`; bitsandbytes' own default is `fp4`). */
  readonly type?: QuantType;
  /** Elements per absmax block (default 64; a power of two from 32 to 4096). */
  readonly blockSize?: number;
  /** Quantize the absmax values again to 8 bits, blocks of 256 (default true, as QLoRA). */
  readonly doubleQuant?: boolean;
  /**
   * bitsandbytes' `bnb_4bit_compute_dtype` (default `float32`). Written to `quantization_config`; tfjs
   * computes in float32 on every backend, so the forward pass is float32 whatever is chosen.
   */
  readonly computeDtype?: ComputeDtype;
  /**
   * Module names never quantized (transformers' `llm_int8_skip_modules`: a module is skipped when any
   * entry is a substring of its dotted path). Default null: skip the model's output heads
   * (`outputHeadPaths`, else `lm_head`), as transformers keeps `lm_head` in full precision.
   */
  readonly skipModules?: readonly string[] | null;
  /**
   * Merging an adapter into a 4-bit layer (default `requantize`): `requantize` dequantizes, adds ΔW and
   * quantizes again (lossy; the error is measured and reported in the merge note); `dequantize` keeps
   * the merged weight in float32 while merged (exact, but the layer holds a float32 weight until unmerged).
   */
  readonly merge?: QuantMergeMode;
  /**
   * Keep the pre-merge packed bytes while merged so that unmerging restores them bit for bit (default
   * true; costs the packed size again per merged layer). False: unmerge re-quantizes again, as PEFT.
   */
  readonly keepOriginalOnMerge?: boolean;
}

/** {@link QuantOptions} with every default filled. */
export interface QuantConfig {
  /** 4-bit data type: `nf4` (default) or `fp4`; transformers' `bnb_4bit_quant_type`. */
  readonly type: QuantType;
  /** Elements per first-level absmax block: a power of two from 32 to 4096 (default 64). */
  readonly blockSize: number;
  /** Whether the absmax values are quantized again to 8 bits in blocks of 256 (default true); `bnb_4bit_use_double_quant`. */
  readonly doubleQuant: boolean;
  /** `bnb_4bit_compute_dtype` to record (default `float32`); tfjs computes in float32 whatever it is. */
  readonly computeDtype: ComputeDtype;
  /** Substrings of module paths never quantized (`llm_int8_skip_modules`), or null (default) to skip the output heads (`lm_head`). */
  readonly skipModules: readonly string[] | null;
  /** What merging an adapter into a 4-bit layer does: `requantize` (default, lossy) or `dequantize` (float32 while merged). */
  readonly merge: QuantMergeMode;
  /** Keep the pre-merge packed bytes so that unmerging restores them exactly (default true). */
  readonly keepOriginalOnMerge: boolean;
}

const FIELDS = ['type', 'blockSize', 'doubleQuant', 'computeDtype', 'skipModules', 'merge', 'keepOriginalOnMerge'];

function invalid(field: string, received: unknown, expected: string, hint: string): ConfigError {
  return new ConfigError({ plugin: '@lora/quant', field, received, expected, hint });
}

/**
 * Validate {@link QuantOptions} and fill the defaults.
 * @throws {ConfigError} naming the field, e.g. `[@lora/quant] Invalid config: type must be 'nf4' or 'fp4', got "int4".`
 */
export function parseQuantOptions(options: unknown = {}): QuantConfig {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw invalid('options', options, 'an object', "Pass e.g. { type: 'nf4' }.");
  }
  const input = options as Record<string, unknown>;
  for (const key of Object.keys(input)) {
    if (!FIELDS.includes(key)) throw invalid(key, input[key], `one of the known options (${FIELDS.join(', ')})`, 'Remove it.');
  }
  const type = input['type'] ?? 'nf4';
  if (type !== 'nf4' && type !== 'fp4') throw invalid('type', type, "'nf4' or 'fp4'", "Pass e.g. { type: 'nf4' }.");
  const blockSize = input['blockSize'] ?? 64;
  if (typeof blockSize !== 'number' || !VALID_BLOCK_SIZES.includes(blockSize)) {
    throw invalid('blockSize', blockSize, `one of ${VALID_BLOCK_SIZES.join(', ')}`, 'Pass e.g. { blockSize: 64 }.');
  }
  const doubleQuant = input['doubleQuant'] ?? true;
  if (typeof doubleQuant !== 'boolean') throw invalid('doubleQuant', doubleQuant, 'a boolean', 'Pass e.g. { doubleQuant: true }.');
  const computeDtype = input['computeDtype'] ?? 'float32';
  if (computeDtype !== 'float32' && computeDtype !== 'bfloat16' && computeDtype !== 'float16') {
    throw invalid('computeDtype', computeDtype, "'float32', 'bfloat16' or 'float16'", "Pass e.g. { computeDtype: 'float32' }.");
  }
  const skipModules = input['skipModules'] ?? null;
  if (skipModules !== null && (!Array.isArray(skipModules) || !skipModules.every((entry) => typeof entry === 'string' && entry.length > 0))) {
    throw invalid('skipModules', skipModules, 'null or a list of non-empty module names', "Pass e.g. { skipModules: ['lm_head'] }.");
  }
  const merge = input['merge'] ?? 'requantize';
  if (merge !== 'requantize' && merge !== 'dequantize') {
    throw invalid('merge', merge, "'requantize' or 'dequantize'", "Pass e.g. { merge: 'requantize' }.");
  }
  const keepOriginalOnMerge = input['keepOriginalOnMerge'] ?? true;
  if (typeof keepOriginalOnMerge !== 'boolean') {
    throw invalid('keepOriginalOnMerge', keepOriginalOnMerge, 'a boolean', 'Pass e.g. { keepOriginalOnMerge: true }.');
  }
  return {
    type,
    blockSize,
    doubleQuant,
    computeDtype,
    skipModules: skipModules === null ? null : [...(skipModules as string[])],
    merge,
    keepOriginalOnMerge,
  };
}

/** transformers' `quantization_config` (in `config.json`) of a bitsandbytes 4-bit model. */
export interface BitsAndBytesConfigJson {
  /** Always `bitsandbytes` (GPTQ/AWQ checkpoints are rejected on load). */
  readonly quant_method: 'bitsandbytes';
  /** Always true: only 4-bit checkpoints are written and read. */
  readonly load_in_4bit: true;
  /** Always false: 8-bit (LLM.int8) is not supported. */
  readonly load_in_8bit: false;
  /** transformers' private copy of `load_in_4bit` (also accepted on load when `load_in_4bit` is absent); always true. */
  readonly _load_in_4bit: true;
  /** transformers' private copy of `load_in_8bit`; always false. */
  readonly _load_in_8bit: false;
  /** {@link QuantConfig.type}: `nf4` or `fp4` (transformers' default when absent on load: `fp4`). */
  readonly bnb_4bit_quant_type: QuantType;
  /** {@link QuantConfig.doubleQuant} (default false when absent on load, as transformers). */
  readonly bnb_4bit_use_double_quant: boolean;
  /** {@link QuantConfig.computeDtype}; on load `fp32`, `bf16` and `fp16` are also accepted (default `float32`). */
  readonly bnb_4bit_compute_dtype: ComputeDtype;
  /** Dtype of the packed-weight tensors; always `uint8` when written (other dtypes are read as raw bytes). */
  readonly bnb_4bit_quant_storage: 'uint8';
  /** {@link QuantConfig.skipModules}: module-path substrings kept in full precision, or null. */
  readonly llm_int8_skip_modules: readonly string[] | null;
  /** LLM.int8 outlier threshold; unused for 4-bit, written as transformers' default 6.0 and ignored on load. */
  readonly llm_int8_threshold: number;
  /** LLM.int8 setting; unused for 4-bit, always written false and ignored on load. */
  readonly llm_int8_has_fp16_weight: boolean;
  /** transformers' CPU-offload switch; not supported here, always written false and ignored on load. */
  readonly llm_int8_enable_fp32_cpu_offload: boolean;
}

/** The `quantization_config` transformers writes for this configuration. */
export function toBitsAndBytesConfig(config: QuantConfig): BitsAndBytesConfigJson {
  return {
    quant_method: 'bitsandbytes',
    load_in_4bit: true,
    load_in_8bit: false,
    _load_in_4bit: true,
    _load_in_8bit: false,
    bnb_4bit_quant_type: config.type,
    bnb_4bit_use_double_quant: config.doubleQuant,
    bnb_4bit_compute_dtype: config.computeDtype,
    bnb_4bit_quant_storage: 'uint8',
    llm_int8_skip_modules: config.skipModules,
    llm_int8_threshold: 6.0,
    llm_int8_has_fp16_weight: false,
    llm_int8_enable_fp32_cpu_offload: false,
  };
}

/** Options for {@link fromBitsAndBytesConfig}. */
export interface FromBitsAndBytesConfigOptions {
  /** Where the object was read from (e.g. the `config.json` path), named in errors. Default: none. */
  readonly source?: string;
}

/**
 * Read a `quantization_config` object (from a model's `config.json`) into {@link QuantConfig}.
 * Block size is not part of transformers' config (it is per tensor, in each quant state): 64 here;
 * `loadQuantizedModel` reports the type and block size the tensors' own quant states carry.
 * @throws {ConfigError} naming the JSON field (and `options.source`) when it is not a bitsandbytes 4-bit
 * config (8-bit LLM.int8 is not supported).
 */
export function fromBitsAndBytesConfig(json: unknown, options: FromBitsAndBytesConfigOptions = {}): QuantConfig {
  const where = options.source ? ` in ${options.source}` : '';
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw invalid('quantization_config', json, 'an object', `Expected the quantization_config of a bitsandbytes 4-bit model${where}.`);
  }
  const raw = json as Record<string, unknown>;
  if (raw['quant_method'] !== undefined && raw['quant_method'] !== 'bitsandbytes') {
    throw invalid('quantization_config.quant_method', raw['quant_method'], "'bitsandbytes'", `Only bitsandbytes 4-bit checkpoints are supported (not GPTQ/AWQ)${where ? `; found${where}` : ''}.`);
  }
  const fourBit = raw['load_in_4bit'] ?? raw['_load_in_4bit'];
  if (fourBit !== true) {
    throw invalid(
      'quantization_config.load_in_4bit',
      fourBit,
      'true',
      raw['load_in_8bit'] === true || raw['_load_in_8bit'] === true
        ? `The checkpoint${where} is 8-bit (LLM.int8), which is not supported; use a 4-bit one.`
        : `Only bitsandbytes 4-bit checkpoints are supported; if the weights are 4-bit, set "load_in_4bit": true${where}.`,
    );
  }
  const storage = raw['bnb_4bit_quant_storage'];
  if (storage !== undefined && storage !== 'uint8' && typeof storage !== 'string') {
    throw invalid('quantization_config.bnb_4bit_quant_storage', storage, 'a dtype name', `Fix it${where}, e.g. "uint8".`);
  }
  const computeDtype = raw['bnb_4bit_compute_dtype'] ?? 'float32';
  const jsonField: Readonly<Record<string, string>> = {
    type: 'bnb_4bit_quant_type',
    doubleQuant: 'bnb_4bit_use_double_quant',
    computeDtype: 'bnb_4bit_compute_dtype',
    skipModules: 'llm_int8_skip_modules',
  };
  try {
    // transformers' defaults: fp4, no double quantization, float32 compute.
    return parseQuantOptions({
      type: raw['bnb_4bit_quant_type'] ?? 'fp4',
      doubleQuant: raw['bnb_4bit_use_double_quant'] ?? false,
      computeDtype: computeDtype === 'fp32' ? 'float32' : computeDtype === 'bf16' ? 'bfloat16' : computeDtype === 'fp16' ? 'float16' : computeDtype,
      skipModules: raw['llm_int8_skip_modules'] ?? null,
    });
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    throw invalid(`quantization_config.${jsonField[error.field] ?? error.field}`, error.received, error.expected, options.source ? `Fix it${where}.` : 'Fix config.json.');
  }
}
