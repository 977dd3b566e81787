import * as tf from '@tensorflow/tfjs-core';
import { afterAll, describe, expect, it } from 'vitest';
import { initRuntime, LoraError } from '../src/index.js';

describe('initRuntime', () => {
  afterAll(async () => {
    await initRuntime();
  });

  it('picks the WASM backend by default in Node and says why', async () => {
    const report = await initRuntime();
    expect(report.backend).toBe('wasm');
    expect(report.requested).toBe('auto');
    expect(report.reason).toMatch(/WASM/u);
    expect(report.gradients).toBe(true);
    // Core's kernel module with fused multiply-adds: Node 20 accepts relaxed SIMD once core's Node
    // entry (here the test set-up) has set V8's flag; LORA_WASM_FMA=0 asks for the plain one.
    expect(report.kernelBuild).toBe(process.env['LORA_WASM_FMA'] === '0' ? 'plain' : 'fma');
    expect(tf.getBackend()).toBe('wasm');
  });

  it('uses the backend named by the option', async () => {
    const report = await initRuntime({ backend: 'cpu' });
    expect(report.backend).toBe('cpu');
    expect(report.source).toBe('option');
    expect(report.kernelBuild).toBe(null);
  });

  it('uses LORA_BACKEND when no option is given', async () => {
    process.env['LORA_BACKEND'] = 'cpu';
    try {
      const report = await initRuntime();
      expect(report.backend).toBe('cpu');
      expect(report.source).toBe('environment');
    } finally {
      delete process.env['LORA_BACKEND'];
    }
  });

  it('throws a LoraError naming @lora/cuda-backend for an unknown backend', async () => {
    await expect(initRuntime({ backend: 'tensorflow' })).rejects.toThrow(LoraError);
    await expect(initRuntime({ backend: 'tensorflow' })).rejects.toThrow(/@lora\/cuda-backend/u);
  });

  it('computes gradients of gather (embedding lookups) on WASM, where tfjs lacks the kernel', async () => {
    await initRuntime({ backend: 'wasm' });
    const table = tf.variable(tf.tensor2d([[1, 2], [3, 4], [5, 6]]));
    const { grads } = tf.variableGrads(() => tf.sum(tf.gather(table, tf.tensor1d([0, 2, 2], 'int32'))), [table]);
    expect(Array.from(grads[table.name]!.dataSync())).toEqual([1, 1, 0, 0, 2, 2]);
    tf.dispose(grads);
    table.dispose();
  });
});
