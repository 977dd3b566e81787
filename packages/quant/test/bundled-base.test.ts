// Acceptance checks on @lora/models' bundled base model (assets/base-moby, read through @lora/models'
// build, which turbo makes before these tests run).
import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, causalLmLoss, createLoraRegistry, entryToFloat32, evaluate, initRuntime, lora, readSafetensorsFile, train } from '@lora/core';
import path from 'node:path';
import { withoutTensorLeaks } from '@lora/core/testing';
import { bundledBaseDirectory, loadBundledBase, mobyDickText, releaseCausalMasks } from '@lora/models';
import { beforeAll, describe, expect, it } from 'vitest';
import { memoryReport, quant, quantStateBytes, quantStateToEntries, quantizeModel, quantizeWeight } from '../src/index.js';

const BASE_DIRECTORY = bundledBaseDirectory();

// GPT-2's linear layers (Conv1D, stored [in, out]); embeddings, norms and the tied head stay float.
const LINEAR_WEIGHT = /\.(c_attn|c_proj|c_fc|q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$/u;

beforeAll(async () => {
  await initRuntime();
});

describe('bundled base model (base-moby)', () => {
  it('stores its 4-bit base weights in ≤ 13% of their float32 size (NF4 + double quant, actual buffers)', async () => {
    const file = await readSafetensorsFile(path.join(BASE_DIRECTORY, 'model.safetensors'));
    let float32 = 0;
    let inMemory = 0;
    let onDisk = 0;
    const tables = new Set<Float32Array>();
    for (const [name, entry] of file.tensors) {
      if (!LINEAR_WEIGHT.test(name) || entry.shape.length !== 2) continue;
      const [rows, columns] = entry.shape as [number, number];
      const stored = entryToFloat32(entry, name);
      // Conv1D [in, out] → [out, in], as transformers quantizes it.
      const weight = new Float32Array(rows * columns);
      for (let r = 0; r < rows; r++) for (let c = 0; c < columns; c++) weight[c * rows + r] = stored[r * columns + c]!;
      const state = quantizeWeight(weight, [columns, rows], { type: 'nf4', doubleQuant: true, name });
      const bytes = quantStateBytes(state);
      inMemory += bytes.packed + bytes.statistics;
      tables.add(state.quantMap).add(state.nested!.quantMap);
      onDisk += [...quantStateToEntries(state, name.slice(0, -'.weight'.length)).values()].reduce((sum, e) => sum + e.data.byteLength, 0);
      float32 += rows * columns * 4;
    }
    for (const table of tables) inMemory += table.byteLength;
    expect(float32).toBeGreaterThan(0);
    console.log(
      `base-moby linear weights: float32 ${float32} B; NF4+DQ in memory ${inMemory} B (${((100 * inMemory) / float32).toFixed(3)}%), ` +
        `bitsandbytes checkpoint tensors ${onDisk} B (${((100 * onDisk) / float32).toFixed(3)}%, code tables repeated per layer)`,
    );
    expect(inMemory / float32).toBeLessThanOrEqual(0.13);
  });

  it('reports ≤ 13% for the quantized model from memoryReport', async () => {
    await withoutTensorLeaks(async () => {
      const { model } = await loadBundledBase();
      quantizeModel(model);
      const report = memoryReport(model);
      console.log(report.summary);
      expect(report.quantizedFraction).toBeLessThanOrEqual(0.13);
      model.dispose();
    });
  });

  it('QLoRA reaches a validation loss within 2% of LoRA on the same data and steps', async () => {
    const text = await mobyDickText();
    const steps = 40;
    const contextLength = 64;
    const losses: Record<string, number> = {};
    const modelBytes: Record<string, number> = {};
    // The models keep one causal mask per sequence length on purpose: released around the count.
    releaseCausalMasks();
    const tensorsBefore = tf.memory().numTensors;
    for (const transforms of [[], ['quant']] as const) {
      const { model, tokenizer } = await loadBundledBase();
      const ids = tokenizer.encode(text.slice(0, 120_000));
      const windows: number[][] = [];
      for (let start = 0; start + contextLength <= ids.length; start += contextLength) windows.push(ids.slice(start, start + contextLength));
      const toBatch = (rows: number[][]): tf.Tensor2D => tf.tensor2d(rows, [rows.length, contextLength], 'int32');
      const trainData = Array.from({ length: steps }, (_, i) => toBatch(windows.slice(i * 4, i * 4 + 4)));
      const evalData = Array.from({ length: 8 }, (_, i) => toBatch(windows.slice(windows.length - 32 + i * 4, windows.length - 28 + i * 4)));
      const registry = createLoraRegistry({ plugins: [lora({ seed: 11 }), quant()] });
      const peft = AdapterModel.create(model, {
        registry,
        config: { r: 8, loraAlpha: 16, targetModules: ['c_attn', 'c_proj', 'c_fc'] },
        transforms: [...transforms],
      });
      // Bytes the model holds (weights, 4-bit state, adapters), from the actual buffers.
      modelBytes[transforms.length ? 'qlora' : 'lora'] = memoryReport(peft.model).total;
      const lossFn = (batch: tf.Tensor2D): tf.Scalar => tf.tidy(() => causalLmLoss(peft.model.forward(batch), batch));
      await train({ model: peft.model, lossFn, trainData, steps, learningRate: 2e-3 });
      losses[transforms.length ? 'qlora' : 'lora'] = evaluate(peft.model, lossFn, evalData);
      tf.dispose([...trainData, ...evalData]);
      peft.dispose();
    }
    releaseCausalMasks();
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    console.log(
      `validation loss after ${steps} steps: LoRA ${losses['lora']!.toFixed(4)}, QLoRA ${losses['qlora']!.toFixed(4)}; ` +
        `model bytes: LoRA on float32 base ${modelBytes['lora']}, QLoRA ${modelBytes['qlora']} (${((100 * modelBytes['qlora']!) / modelBytes['lora']!).toFixed(1)}%)`,
    );
    expect(modelBytes['qlora']!).toBeLessThan(modelBytes['lora']!);
    expect(Math.abs(losses['qlora']! - losses['lora']!) / losses['lora']!).toBeLessThanOrEqual(0.02);
  });
});

