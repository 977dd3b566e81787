import { ConfigError } from '@lora/core';
import { describe, expect, it } from 'vitest';
import { batchConditions, conditionKey, hyperLoraConfigFromPeftJson, hyperLoraConfigToPeftJson, parseConditionText, parseHyperLoraConfig, resolveCondition } from '../src/index.js';
import { INVALID_CONFIGS, LANGUAGES } from './helpers.js';

const condition = { kind: 'discrete', factors: [{ name: 'task', values: ['a', 'b'], dim: 4 }] };

describe('parseHyperLoraConfig', () => {
  it('fills the documented defaults', () => {
    const config = parseHyperLoraConfig({ condition });
    expect([config.r, config.loraAlpha, config.headMode, config.basisSize, config.trunkWidth, config.trunkDepth, config.layerEmbeddingDim, config.typeEmbeddingDim, config.conditionDropout]).toEqual([
      8, 8, 'basis', 8, 64, 2, 8, 8, 0,
    ]);
    expect(config.condition).toEqual({ kind: 'discrete', factors: [{ name: 'task', values: ['a', 'b'], dim: 4 }] });
  });

  for (const [input, field] of INVALID_CONFIGS) {
    it(`rejects ${JSON.stringify(input)} with a ConfigError naming ${field}`, () => {
      let caught: unknown;
      try {
        parseHyperLoraConfig(input);
      } catch (error) {
        caught = error;
      }
      expect(caught).toBeInstanceOf(ConfigError);
      expect((caught as ConfigError).field).toBe(field);
      expect((caught as Error).message).toMatch(/^\[hyper\] Invalid config: /u);
      expect((caught as Error).message).not.toContain('\n');
    });
  }
});

describe('hyperLoraConfigToPeftJson', () => {
  it('writes HYPERLORA with the condition vocabulary and reads it back unchanged', () => {
    const config = parseHyperLoraConfig({ r: 4, targetModules: ['q', 'v'], condition: LANGUAGES, headMode: 'diag', conditionDropout: 0.1 });
    const json = hyperLoraConfigToPeftJson(config);
    expect(json.peft_type).toBe('HYPERLORA');
    expect(json['condition']).toEqual(LANGUAGES);
    expect([json['head_mode'], json['condition_dropout'], json['trunk_width']]).toEqual(['diag', 0.1, 64]);
    expect(hyperLoraConfigToPeftJson(hyperLoraConfigFromPeftJson(JSON.parse(JSON.stringify(json))))).toEqual(json);
  });
});

describe('conditions', () => {
  it('parses the CLI form and rejects unknown factors and values, listing the known ones', () => {
    expect(parseConditionText('src=fr, tgt=de')).toEqual({ src: 'fr', tgt: 'de' });
    expect(() => parseConditionText('src')).toThrow(ConfigError);
    expect(() => parseConditionText('src=fr,src=de')).toThrow(/each factor once/u);
    expect(() => resolveCondition(LANGUAGES, { lang: 'fr' })).toThrow(/Known factors: src \(en, fr, de\); tgt \(en, fr, de\)/u);
    expect(() => resolveCondition(LANGUAGES, { src: 'es' })).toThrow(/condition\.src must be one of "en", "fr", "de", got "es"/u);
    expect(() => resolveCondition({ kind: 'continuous', size: 3, dim: 4 }, [1, 2])).toThrow(/a vector of 3 numbers/u);
    expect(() => resolveCondition({ kind: 'continuous', size: 2, dim: 4 }, [1, Number.NaN])).toThrow(ConfigError);
  });

  it('keys a continuous condition by its float32 bytes (little-endian hex), without Node’s Buffer', () => {
    const spec = { kind: 'continuous', size: 2, dim: 4 } as const;
    // 1.0f is 0x3f800000, -2.0f is 0xc0000000; stored little-endian.
    expect(conditionKey(spec, resolveCondition(spec, [1, -2]))).toBe('vector:0000803f000000c0');
    // A view into a larger buffer keys only its own bytes.
    const backing = new Float32Array([9, 1, -2, 9]);
    expect(conditionKey(spec, { kind: 'continuous', vector: backing.subarray(1, 3) })).toBe('vector:0000803f000000c0');
    expect(conditionKey(spec, resolveCondition(spec, [1, 2]))).not.toBe(conditionKey(spec, resolveCondition(spec, [1, -2])));
  });
});

describe('factor names that are Object.prototype members', () => {
  for (const name of ['toString', 'constructor', 'valueOf', 'hasOwnProperty', '__proto__']) {
    it(`treat "${name}" as an ordinary factor`, () => {
      const spec = parseHyperLoraConfig({ targetModules: ['q'], condition: { kind: 'discrete', factors: [{ name, values: ['x', 'y'] }, { name: 'other', values: ['p'] }] } }).condition;
      // Left out: its null embedding, not the inherited function.
      expect(resolveCondition(spec, { other: 'p' })).toEqual({ kind: 'discrete', indices: [0, 1] });
      expect(resolveCondition(spec, {})).toEqual({ kind: 'discrete', indices: [0, 0] });
      // Given (JSON and the CLI form create it as an own property, __proto__ included).
      expect(resolveCondition(spec, JSON.parse(`{"${name}": "y"}`))).toEqual({ kind: 'discrete', indices: [2, 0] });
      const parsed = parseConditionText(`${name}=y,other=p`);
      expect(Object.keys(parsed)).toEqual([name, 'other']);
      expect(resolveCondition(spec, parsed)).toEqual({ kind: 'discrete', indices: [2, 1] });
      expect(() => resolveCondition(spec, JSON.parse(`{"${name}": "z"}`))).toThrow(`condition.${name} must be one of "x", "y", got "z"`);
      expect(() => parseConditionText(`${name}=x,${name}=y`)).toThrow(`("${name}" repeats)`);
      expect(batchConditions(spec, [{ other: 'p' }, JSON.parse(`{"${name}": "x"}`)]).keys).toEqual([`${name}=|other=p`, `${name}=x|other=`]);
    });
  }
});
