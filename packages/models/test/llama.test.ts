import * as tf from '@tensorflow/tfjs-core';
import { initRuntime, type ConfigError } from '@lora/core';
import { beforeAll, describe, expect, it } from 'vitest';
import { KeyValueCache, createModel, parseLlamaConfig, rotaryInverseFrequencies, type LlamaForCausalLM } from '../src/index.js';
import { ids, relativeError, withoutLeaks } from './helpers.js';
import { rotaryTables, rotaryTablesOnDevice } from '../src/rotary.js';
import { CAUSAL_ATTENTION_KERNEL, ROTARY_KERNEL, spyOnKernels } from '@lora/core/internal';

/** Plain float64 recomputation of LlamaForCausalLM from the published equations (no tfjs). */
type Matrix = number[][];

function rows(values: ArrayLike<number>, shape: readonly number[]): Matrix {
  const [r, c] = shape.length === 1 ? [1, shape[0]!] : [shape[0]!, shape[1]!];
  return Array.from({ length: r }, (_, i) => Array.from({ length: c }, (_, j) => values[i * c + j]!));
}

/** y = W·x for W [out, in]. */
function project(weight: Matrix, x: readonly number[]): number[] {
  return weight.map((row) => row.reduce((sum, w, j) => sum + w * x[j]!, 0));
}

function rmsNorm(x: readonly number[], weight: readonly number[], eps: number): number[] {
  const meanSquare = x.reduce((s, v) => s + v * v, 0) / x.length;
  const scale = 1 / Math.sqrt(meanSquare + eps);
  return x.map((v, i) => v * scale * weight[i]!);
}

/** Rotary embedding of one head vector at `position` (rotate_half convention: pairs (i, i + d/2)). */
function rope(x: readonly number[], position: number, theta: number): number[] {
  const d = x.length;
  const half = d / 2;
  const out = [...x];
  for (let i = 0; i < half; i++) {
    const angle = position / theta ** ((2 * i) / d);
    const [c, s] = [Math.cos(angle), Math.sin(angle)];
    out[i] = x[i]! * c - x[i + half]! * s;
    out[i + half] = x[i + half]! * c + x[i]! * s;
  }
  return out;
}

interface LlamaShape {
  hidden: number;
  heads: number;
  kvHeads: number;
  layers: number;
  eps: number;
  theta: number;
  tied: boolean;
}

function referenceLogits(params: Map<string, Matrix>, shape: LlamaShape, tokens: number[], mask: number[]): number[][] {
  const p = (name: string): Matrix => {
    const value = params.get(name);
    if (!value) throw new Error(`no parameter ${name}`);
    return value;
  };
  const headDim = shape.hidden / shape.heads;
  const group = shape.heads / shape.kvHeads;
  let h = tokens.map((id) => [...p('model.embed_tokens.weight')[id]!]);
  for (let l = 0; l < shape.layers; l++) {
    const prefix = `model.layers.${l}`;
    const x = h.map((v) => rmsNorm(v, p(`${prefix}.input_layernorm.weight`)[0]!, shape.eps));
    const split = (v: number[], n: number): number[][] => Array.from({ length: n }, (_, i) => v.slice(i * headDim, (i + 1) * headDim));
    const q = x.map((v, t) => split(project(p(`${prefix}.self_attn.q_proj.weight`), v), shape.heads).map((head) => rope(head, t, shape.theta)));
    const k = x.map((v, t) => split(project(p(`${prefix}.self_attn.k_proj.weight`), v), shape.kvHeads).map((head) => rope(head, t, shape.theta)));
    const vv = x.map((v) => split(project(p(`${prefix}.self_attn.v_proj.weight`), v), shape.kvHeads));
    const attended = q.map((qt, t) => {
      const out: number[] = [];
      for (let head = 0; head < shape.heads; head++) {
        const kvHead = Math.floor(head / group);
        const allowed = Array.from({ length: t + 1 }, (_, j) => j).filter((j) => mask[j] === 1);
        const scores = allowed.map((j) => qt[head]!.reduce((s, a, i) => s + a * k[j]![kvHead]![i]!, 0) / Math.sqrt(headDim));
        const top = Math.max(...scores);
        const weights = scores.map((s) => Math.exp(s - top));
        const total = weights.reduce((a, b) => a + b, 0);
        for (let i = 0; i < headDim; i++) out.push(allowed.reduce((s, j, n) => s + (weights[n]! / total) * vv[j]![kvHead]![i]!, 0));
      }
      return out;
    });
    h = h.map((v, t) => {
      const o = project(p(`${prefix}.self_attn.o_proj.weight`), attended[t]!);
      return v.map((a, i) => a + o[i]!);
    });
    h = h.map((v) => {
      const y = rmsNorm(v, p(`${prefix}.post_attention_layernorm.weight`)[0]!, shape.eps);
      const gate = project(p(`${prefix}.mlp.gate_proj.weight`), y).map((g) => g / (1 + Math.exp(-g)));
      const up = project(p(`${prefix}.mlp.up_proj.weight`), y);
      const down = project(p(`${prefix}.mlp.down_proj.weight`), gate.map((g, i) => g * up[i]!));
      return v.map((a, i) => a + down[i]!);
    });
  }
  const head = shape.tied ? p('model.embed_tokens.weight') : p('lm_head.weight');
  return h.map((v) => project(head, rmsNorm(v, p('model.norm.weight')[0]!, shape.eps)));
}

function tinyLlama(tied: boolean, seed: number, kvHeads = 2): { model: LlamaForCausalLM; shape: LlamaShape } {
  const shape: LlamaShape = { hidden: 32, heads: 4, kvHeads, layers: 2, eps: 1e-6, theta: 10000, tied };
  const model = createModel(
    {
      architectures: ['LlamaForCausalLM'],
      vocab_size: 61,
      hidden_size: shape.hidden,
      intermediate_size: 48,
      num_hidden_layers: shape.layers,
      num_attention_heads: shape.heads,
      num_key_value_heads: shape.kvHeads,
      rms_norm_eps: shape.eps,
      rope_theta: shape.theta,
      tie_word_embeddings: tied,
    },
    { seed },
  ) as LlamaForCausalLM;
  // Larger random values everywhere (norm weights too) so every term of the forward pass matters.
  let index = 0;
  for (const [, variable] of model.namedParameters()) {
    tf.tidy(() => variable.assign(tf.add(tf.randomNormal(variable.shape, 0, 0.3, 'float32', seed * 1000 + index++), variable.shape.length === 1 ? 1 : 0)));
  }
  model.eval();
  return { model, shape };
}

describe('LlamaForCausalLM', () => {
  beforeAll(async () => {
    await initRuntime();
  });

  for (const tied of [false, true]) {
    it(`matches a float64 reference with grouped-query attention (4 heads, 2 kv heads), ${tied ? 'tied' : 'untied'} embeddings`, async () => {
      const { model, shape } = tinyLlama(tied, tied ? 11 : 12);
      const names = model.namedParameters().map(([name]) => name);
      expect(names.includes('lm_head.weight')).toBe(!tied);
      expect(model.getSubmodule('model.layers.0.self_attn.k_proj').getOwnParameter('weight')!.shape).toEqual([16, 32]);
      const params = new Map(model.namedParameters().map(([name, variable]) => [name, rows(variable.dataSync(), variable.shape)]));
      const tokens = [
        [3, 17, 42, 8, 60, 1, 29],
        [5, 5, 33, 12, 0, 47, 9],
      ];
      const masks = [
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 0],
      ];
      await withoutLeaks(() => {
        const input = ids(tokens);
        const attentionMask = ids(masks);
        const logits = model.forward(input, { attentionMask });
        const actual = logits.arraySync() as number[][][];
        // Compare the positions a padded row really uses (its padded last position attends to nothing meaningful).
        const expected = tokens.map((row, b) => referenceLogits(params, shape, row, masks[b]!));
        const actualUsed = [...actual[0]!.flat(), ...actual[1]!.slice(0, 6).flat()];
        const expectedUsed = [...expected[0]!.flat(), ...expected[1]!.slice(0, 6).flat()];
        const error = relativeError(actualUsed, expectedUsed);
        console.log(`llama (${tied ? 'tied' : 'untied'}) vs float64 reference: rel err ${error.toExponential(2)}`);
        expect(error).toBeLessThan(1e-4);
        tf.dispose([input, attentionMask, logits]);
      });
      model.dispose();
    });
  }

  it.each([4, 2, 1])('matches the float64 reference without padding, with %i key/value heads for 4 query heads, where attention runs in one kernel each way on the projections’ layout (WASM: no transposes)', async (kvHeads) => {
    const { model, shape } = tinyLlama(false, 14, kvHeads);
    const params = new Map(model.namedParameters().map(([name, variable]) => [name, rows(variable.dataSync(), variable.shape)]));
    const tokens = [
      [3, 17, 42, 8, 60, 1, 29],
      [5, 5, 33, 12, 0, 47, 9],
    ];
    await withoutLeaks(() => {
      const input = ids(tokens);
      const spy = spyOnKernels();
      const logits = model.forward(input);
      spy.stop();
      const names = spy.calls.map((call) => call.kernelName);
      if (tf.getBackend() === 'wasm') {
        expect(names.filter((name) => name === CAUSAL_ATTENTION_KERNEL)).toHaveLength(shape.layers);
        expect(names.filter((name) => name === ROTARY_KERNEL)).toHaveLength(2 * shape.layers);
        expect(names).not.toContain('Transpose');
      }
      const expected = tokens.map((row) => referenceLogits(params, shape, row, row.map(() => 1)));
      const error = relativeError(logits, expected.flat(2));
      console.log(`llama (${kvHeads} key/value heads, no padding, ${tf.getBackend()}) vs float64 reference: rel err ${error.toExponential(2)}`);
      expect(error).toBeLessThan(1e-4);
      tf.dispose([input, logits]);
    });
    model.dispose();
  });

  it('gives the same last-token logits with a key/value cache as with the full sequence', async () => {
    const { model } = tinyLlama(false, 13);
    await withoutLeaks(() => {
      const full = tf.tidy(() => tf.slice(model.forward(ids([[3, 17, 42, 8, 60]])), [0, 4, 0], [1, 1, 61]));
      const cache = new KeyValueCache(model.numLayers);
      tf.tidy(() => {
        model.forward(ids([[3, 17, 42, 8]]), { cache });
      });
      expect(cache.length).toBe(4);
      const step = tf.tidy(() => model.forward(ids([[60]]), { cache }));
      expect(cache.length).toBe(5);
      expect(relativeError(step, full.dataSync())).toBeLessThan(1e-5);
      cache.dispose();
      tf.dispose([full, step]);
    });
    model.dispose();
  });
});

describe('rotary tables', () => {
  it('are the same computed on the device from a positions tensor (GPU backends) as on the host in float64, within float32 angles', async () => {
    await initRuntime();
    const config = parseLlamaConfig({ vocab_size: 10, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 1, num_attention_heads: 2 });
    const frequencies = rotaryInverseFrequencies(config);
    const rows = [
      [0, 1, 2, 3, 4],
      [0, 0, 7, 8, 200],
    ];
    await withoutLeaks(() => {
      const host = rotaryTables(frequencies, rows.flat(), 2, 5);
      const positions = ids(rows);
      const device = rotaryTablesOnDevice(frequencies, positions, 2, 5);
      expect(device.cos.shape).toEqual([2, 5, 1, frequencies.length]);
      // float32 angles: position · frequency rounds to about 1e-5 at 200 radians.
      expect(relativeError(device.cos, host.cos.dataSync())).toBeLessThan(3e-5);
      expect(relativeError(device.sin, host.sin.dataSync())).toBeLessThan(3e-5);
      // One row of positions for every sequence.
      const shared = tf.tensor1d([0, 1, 2, 3, 4], 'int32');
      const broadcast = rotaryTablesOnDevice(frequencies, shared, 2, 5);
      const sharedHost = rotaryTables(frequencies, [...rows[0]!, ...rows[0]!], 2, 5);
      expect(relativeError(broadcast.cos, sharedHost.cos.dataSync())).toBeLessThan(3e-5);
      tf.dispose([host.cos, host.sin, positions, device.cos, device.sin, shared, broadcast.cos, broadcast.sin, sharedHost.cos, sharedHost.sin]);
    });
  });
});

describe('rotaryInverseFrequencies', () => {
  const base = { hidden_size: 256, num_attention_heads: 2, rope_theta: 500000 };

  it('applies linear and llama3 rope_scaling as transformers does', () => {
    const plain = rotaryInverseFrequencies(parseLlamaConfig(base));
    expect(plain).toHaveLength(64);
    expect(plain[1]).toBeCloseTo(1 / 500000 ** (2 / 128), 15);
    const linear = rotaryInverseFrequencies(parseLlamaConfig({ ...base, rope_scaling: { type: 'linear', factor: 4 } }));
    linear.forEach((f, i) => expect(f).toBeCloseTo(plain[i]! / 4, 15));
    const llama3 = rotaryInverseFrequencies(
      parseLlamaConfig({
        ...base,
        rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
      }),
    );
    // Wavelengths below 8192/4 keep their frequency, above 8192/1 are divided by 8, in between are blended.
    for (let i = 0; i < 64; i++) {
      const wavelength = (2 * Math.PI) / plain[i]!;
      if (wavelength < 2048) expect(llama3[i]).toBe(plain[i]);
      else if (wavelength > 8192) expect(llama3[i]).toBeCloseTo(plain[i]! / 8, 15);
      else {
        const smooth = (8192 / wavelength - 1) / 3;
        expect(llama3[i]).toBeCloseTo((1 - smooth) * (plain[i]! / 8) + smooth * plain[i]!, 15);
      }
    }
    expect(llama3.filter((f, i) => f !== plain[i]).length).toBeGreaterThan(10);
  });

  it('rejects an unknown rope type naming rope_scaling', () => {
    expect(() => parseLlamaConfig({ ...base, rope_scaling: { rope_type: 'yarn', factor: 4 } })).toThrow(/rope_scaling/u);
    try {
      parseLlamaConfig({ ...base, rope_scaling: { rope_type: 'yarn', factor: 4 } });
    } catch (error) {
      expect((error as ConfigError).field).toBe('rope_scaling');
    }
  });
});
