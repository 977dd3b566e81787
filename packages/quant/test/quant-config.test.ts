import { ConfigError } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { fromBitsAndBytesConfig, parseQuantOptions, quant, toBitsAndBytesConfig } from '../src/index.js';

function fieldOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).field;
  }
  throw new Error('expected a ConfigError');
}

describe('parseQuantOptions / quant', () => {
  it("fills QLoRA's defaults", () => {
    expect(parseQuantOptions({})).toEqual({
      type: 'nf4',
      blockSize: 64,
      doubleQuant: true,
      computeDtype: 'float32',
      skipModules: null,
      merge: 'requantize',
      keepOriginalOnMerge: true,
    });
    const transform = quant({ type: 'fp4', blockSize: 128 });
    expect(transform).toMatchObject({ specificationVersion: 'v2', kind: 'base-transform', name: 'quant', packageName: '@lora/quant' });
    expect(transform.config.type).toBe('fp4');
  });

  it('rejects invalid options with a ConfigError naming the field', () => {
    expect(fieldOf(() => quant({ type: 'int4' as 'nf4' }))).toBe('type');
    expect(fieldOf(() => quant({ blockSize: 48 }))).toBe('blockSize');
    expect(fieldOf(() => quant({ doubleQuant: 'yes' as unknown as boolean }))).toBe('doubleQuant');
    expect(fieldOf(() => quant({ computeDtype: 'int8' as 'float32' }))).toBe('computeDtype');
    expect(fieldOf(() => quant({ merge: 'average' as 'requantize' }))).toBe('merge');
    expect(fieldOf(() => quant({ skipModules: [''] }))).toBe('skipModules');
    expect(fieldOf(() => parseQuantOptions({ blocksize: 64 }))).toBe('blocksize');
    expect(() => quant({ type: 'int4' as 'nf4' })).toThrow(/\[@lora\/quant\] Invalid config: type must be 'nf4' or 'fp4', got "int4"/u);
  });
});

describe('quantization_config', () => {
  it("round-trips transformers' BitsAndBytesConfig fields", () => {
    const json = toBitsAndBytesConfig(parseQuantOptions({ computeDtype: 'bfloat16', skipModules: ['lm_head'] }));
    expect(json).toMatchObject({
      quant_method: 'bitsandbytes',
      load_in_4bit: true,
      load_in_8bit: false,
      bnb_4bit_quant_type: 'nf4',
      bnb_4bit_use_double_quant: true,
      bnb_4bit_compute_dtype: 'bfloat16',
      bnb_4bit_quant_storage: 'uint8',
      llm_int8_skip_modules: ['lm_head'],
    });
    expect(fromBitsAndBytesConfig(json)).toMatchObject({ type: 'nf4', doubleQuant: true, computeDtype: 'bfloat16', skipModules: ['lm_head'] });
  });

  it("applies transformers' defaults (fp4, no double quant) to a sparse config", () => {
    expect(fromBitsAndBytesConfig({ load_in_4bit: true })).toMatchObject({ type: 'fp4', doubleQuant: false, computeDtype: 'float32' });
  });

  it('refuses 8-bit and non-bitsandbytes configs, naming the JSON field', () => {
    expect(fieldOf(() => fromBitsAndBytesConfig({ load_in_8bit: true }))).toBe('quantization_config.load_in_4bit');
    expect(fieldOf(() => fromBitsAndBytesConfig({ quant_method: 'gptq', load_in_4bit: true }))).toBe('quantization_config.quant_method');
    expect(fieldOf(() => fromBitsAndBytesConfig({ load_in_4bit: true, bnb_4bit_quant_type: 'int4' }))).toBe('quantization_config.bnb_4bit_quant_type');
  });

  it('names the file in every error when given options.source', () => {
    const source = '/models/gpt2-nf4/config.json';
    for (const json of [null, { load_in_8bit: true }, {}, { quant_method: 'gptq', load_in_4bit: true }, { load_in_4bit: true, bnb_4bit_quant_type: 'int4' }, { load_in_4bit: true, bnb_4bit_quant_storage: 8 }]) {
      expect(() => fromBitsAndBytesConfig(json, { source }), JSON.stringify(json)).toThrow(` in ${source}`);
    }
  });
});
