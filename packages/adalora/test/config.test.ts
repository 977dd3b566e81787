import { ConfigError, type PeftConfigJson } from '@lora/core';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { adaLoraConfigFromPeftJson, adaLoraConfigToPeftJson, adalora, parseAdaLoraConfig } from '../src/index.js';
import { ADALORA_FIXTURE, readJson } from './helpers.js';

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('parseAdaLoraConfig', () => {
  it("fills PEFT's defaults for every AdaLoRA field", () => {
    const config = parseAdaLoraConfig({ totalStep: 100, targetModules: ['q'] });
    expect(config).toMatchObject({
      initR: 12,
      targetR: 8,
      tinit: 0,
      tfinal: 0,
      deltaT: 1,
      beta1: 0.85,
      beta2: 0.85,
      orthRegWeight: 0.5,
      totalStep: 100,
      rankPattern: null,
      loraAlpha: 8,
      loraDropout: 0,
      r: 8,
      fanInFanOut: false,
      initLoraWeights: true,
      useRslora: false,
      useDora: false,
      bias: 'none',
      growth: null,
      orthogonalRegularizer: 'peft',
    });
  });

  it('throws a ConfigError naming totalStep when total_step is missing', () => {
    const error = configError(() => parseAdaLoraConfig({ initR: 6, targetModules: ['q'] }));
    expect(error.field).toBe('totalStep');
    expect(error.message).toContain('total_step');
    expect(error.message).toContain('{ totalStep: 1000 }');
    expect(error.plugin).toBe('adalora');
  });

  it('throws naming the field for values PEFT rejects', () => {
    expect(configError(() => parseAdaLoraConfig({ totalStep: 10, tinit: 8, tfinal: 2 })).field).toBe('tinit');
    expect(configError(() => parseAdaLoraConfig({ totalStep: 10, orthRegWeight: -1 })).field).toBe('orthRegWeight');
    expect(configError(() => parseAdaLoraConfig({ totalStep: 10, beta1: 1 })).field).toBe('beta1');
    expect(configError(() => parseAdaLoraConfig({ totalStep: 10, useDora: true })).field).toBe('useDora');
    expect(configError(() => parseAdaLoraConfig({ totalStep: 10, growth: { startRank: 0, every: 2 } })).field).toBe('growth.startRank');
  });

  it('accepts a frozen (inference) config without totalStep, as saved by PEFT before it became mandatory', () => {
    expect(parseAdaLoraConfig({ inferenceMode: true }).totalStep).toBeNull();
  });
});

describe('adaLoraConfigFromPeftJson / adaLoraConfigToPeftJson', () => {
  it("reads the fixture's adapter_config.json and writes it back key for key", async () => {
    const json = await readJson<PeftConfigJson>(path.join(ADALORA_FIXTURE, 'adapter_config.json'));
    const config = adaLoraConfigFromPeftJson(json);
    expect(config.initR).toBe(6);
    expect(config.targetR).toBe(2);
    expect(config.totalStep).toBe(10);
    expect(config.deltaT).toBe(1);
    expect(config.fanInFanOut).toBe(true);
    expect(config.rankPattern?.['transformer.h.1.attn.c_attn.lora_E']).toEqual([false, false, false, false, false, false]);
    expect(config.extraPeftFields).toMatchObject({ loftq_config: {}, megatron_core: 'megatron.core' });
    const again = adaLoraConfigToPeftJson(config) as Record<string, unknown>;
    expect(again).toEqual(json);
    expect(Object.keys(again)).toContain('deltaT');
    expect(Object.keys(again)).not.toContain('delta_t');
  });

  it('leaves our extension fields out of the PEFT JSON', () => {
    const config = parseAdaLoraConfig({ totalStep: 10, initR: 4, targetR: 2, growth: { startRank: 2, every: 3 }, orthogonalRegularizer: 'paper' });
    const json = adaLoraConfigToPeftJson(config) as Record<string, unknown>;
    expect(json['growth']).toBeUndefined();
    expect(json['orthogonal_regularizer']).toBeUndefined();
    expect(json['peft_type']).toBe('ADALORA');
    expect(json['rank_pattern']).toBeNull();
    expect(json['total_step']).toBe(10);
  });

  it('rejects a LoftQ config, as PEFT does', () => {
    const error = configError(() => adaLoraConfigFromPeftJson({ peft_type: 'ADALORA', total_step: 10, loftq_config: { loftq_bits: 4 } }));
    expect(error.field).toBe('loftq_config');
  });

  it('is claimed by the plugin for peft_type ADALORA only', () => {
    const plugin = adalora();
    expect(plugin.claimsPeftConfig({ peft_type: 'ADALORA' })).toBe(true);
    expect(plugin.claimsPeftConfig({ peft_type: 'LORA' })).toBe(false);
  });
});
