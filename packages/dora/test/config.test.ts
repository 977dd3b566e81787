import { ConfigError, createLoraRegistry, findPluginForPeftConfig, lora, pluginPackage as corePackage, RegistryError } from '@lora/core';
import { quant } from '@lora/quant';
import { describe, expect, it } from 'vitest';
import {
  dora,
  doraConfigFromPeftJson,
  doraConfigToPeftJson,
  doubleLora,
  isDoraPeftConfig,
  parseDoraConfig,
  parseDoubleLoraConfig,
  PEFT_CLASSIC_LORA_FIELDS,
  pluginPackage,
} from '../src/index.js';

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error('expected a ConfigError');
}

describe('parseDoraConfig', () => {
  it("fills PEFT's LoRA defaults with useDora true", () => {
    const config = parseDoraConfig({ targetModules: ['q_proj'] });
    expect(config).toMatchObject({ r: 8, loraAlpha: 8, loraDropout: 0, useRslora: false, initLoraWeights: true, useDora: true, bias: 'none' });
  });

  it('names the field, the value and an example in its errors', () => {
    const error = configError(() => parseDoraConfig({ r: 0 }));
    expect(error.field).toBe('r');
    expect(error.message).toBe('[dora] Invalid config: r must be > 0, got 0. Pass e.g. { r: 8 }.');
    expect(configError(() => parseDoraConfig({ loraDropout: 1 })).field).toBe('loraDropout');
    const bias = configError(() => parseDoraConfig({ loraBias: true }));
    expect(bias.field).toBe('loraBias');
    expect(bias.message).toMatch(/^\[dora\] Invalid config: loraBias must be false, got true\./u);
  });

  it('refuses useDora false and points to lora()', () => {
    const error = configError(() => parseDoraConfig({ useDora: false }));
    expect(error.field).toBe('useDora');
    expect(error.message).toContain('lora() from @lora/core');
  });
});

describe('doraConfigToPeftJson', () => {
  it('writes LORA with use_dora true, PEFT 0.10’s classic keys, and exclude_modules only when set', () => {
    const json = doraConfigToPeftJson(parseDoraConfig({ r: 4, targetModules: ['c_attn'] }));
    expect(json.peft_type).toBe('LORA');
    expect(json['use_dora']).toBe(true);
    expect(json['inference_mode']).toBe(true);
    for (const [key, value] of Object.entries(PEFT_CLASSIC_LORA_FIELDS)) expect(json[key]).toEqual(value);
    expect('exclude_modules' in json).toBe(false);
    expect(doraConfigToPeftJson(parseDoraConfig({ excludeModules: ['lm_head'] }))['exclude_modules']).toEqual(['lm_head']);
    expect(Object.keys(json)).toEqual([...Object.keys(json)].sort());
  });

  it('round-trips through JSON, keeping keys it does not interpret (newer PEFT fields)', () => {
    const json = { ...doraConfigToPeftJson(parseDoraConfig({ r: 4, loraAlpha: 16 })), lora_bias: false, kasa_config: null, megatron_core: 'x' };
    const config = doraConfigFromPeftJson(json);
    expect(config.r).toBe(4);
    expect(doraConfigToPeftJson(config)).toEqual(json);
  });
});

describe('parseDoubleLoraConfig', () => {
  it('fills per-pair defaults', () => {
    expect(parseDoubleLoraConfig({})).toMatchObject({ r1: 8, loraAlpha1: 8, loraDropout1: 0, r2: 8, loraAlpha2: 8, loraDropout2: 0 });
  });

  it('names the field in its errors', () => {
    const error = configError(() => parseDoubleLoraConfig({ r2: 0 }));
    expect(error.message).toBe('[double-lora] Invalid config: r2 must be > 0, got 0. Pass e.g. { r2: 4 }.');
    expect(configError(() => parseDoubleLoraConfig({ r: 4 })).field).toBe('r');
  });
});

describe('dora() and doubleLora() in the registry', () => {
  const registry = createLoraRegistry({ plugins: [lora(), dora(), doubleLora()] });

  it('picks dora for LORA + use_dora, lora for plain LORA, double-lora for DOUBLE_LORA', () => {
    expect(registry.adapterForPeftConfig({ peft_type: 'LORA', use_dora: true }).name).toBe('dora');
    expect(registry.adapterForPeftConfig({ peft_type: 'LORA', use_dora: false }).name).toBe('lora');
    expect(registry.adapterForPeftConfig({ peft_type: 'LORA' }).name).toBe('lora');
    expect(registry.adapterForPeftConfig({ peft_type: 'DOUBLE_LORA' }).name).toBe('double-lora');
    expect(isDoraPeftConfig({ peft_type: 'ADALORA', use_dora: true })).toBe(false);
  });

  it('composes with the quant base transform (QDoRA) by the v2 default', () => {
    const withQuant = createLoraRegistry({ plugins: [dora(), doubleLora(), quant()] });
    expect(withQuant.checkRecipe({ adapter: 'dora', transforms: ['quant'] }).ok).toBe(true);
    expect(withQuant.checkRecipe({ adapter: 'double-lora', transforms: ['quant'] }).ok).toBe(true);
  });

  it("is found for LORA + use_dora and DOUBLE_LORA through the package's descriptor", () => {
    expect(findPluginForPeftConfig([corePackage, pluginPackage], { peft_type: 'LORA', use_dora: true })?.plugin.name).toBe('dora');
    expect(findPluginForPeftConfig([corePackage, pluginPackage], { peft_type: 'DOUBLE_LORA' })?.plugin.name).toBe('double-lora');
    expect(findPluginForPeftConfig([corePackage, pluginPackage], { peft_type: 'LORA' })?.plugin.name).toBe('lora');
  });

  it('without dora(), a DoRA adapter is refused with a RegistryError', () => {
    let caught: unknown;
    try {
      createLoraRegistry({ plugins: [lora()] }).adapterForPeftConfig({ peft_type: 'LORA', use_dora: true });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(RegistryError);
    expect((caught as RegistryError).message).toContain('use_dora');
  });
});
