import { initRuntime } from '@lora/core';
import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { useBestBackend } from '../src/index.node.js';
import { nothingInstalled } from './helpers.js';

describe('useBestBackend', () => {
  it('skips multi-threaded WASM when one thread is asked for', async () => {
    const report = await useBestBackend({ importModule: nothingInstalled, threads: 1 });
    expect(report).toMatchObject({ kind: 'wasm', threads: 1 });
    expect(report.attempts.find((attempt) => attempt.kind === 'wasm-threads')).toMatchObject({ reason: 'single-core' });
  });

  it('keeps a WASM backend that already holds tensors instead of restarting it', async () => {
    await initRuntime({ backend: 'wasm' });
    const weights = tf.tidy(() => tf.variable(tf.ones([4, 4])));
    const report = await useBestBackend({ importModule: nothingInstalled, threads: 2 });
    expect(report).toMatchObject({ kind: 'wasm', threads: 1 });
    const threaded = report.attempts.find((attempt) => attempt.kind === 'wasm-threads');
    expect(threaded).toMatchObject({ reason: 'in-use' });
    expect(threaded!.message).toMatch(/holds \d+ tensor\(s\)\. Call useBestBackend\(\) before creating tensors/u);
    // The tensors made before are intact.
    expect(Array.from(weights.dataSync())).toEqual(new Array(16).fill(1));
    weights.dispose();
  });

  it('restarts WASM with threads once it holds no tensors', async () => {
    const report = await useBestBackend({ importModule: nothingInstalled, threads: 2 });
    expect(report).toMatchObject({ kind: 'wasm-threads', threads: 2 });
  });

  it('leaves the WASM matMul kernels alone with fastMatMul off', async () => {
    const report = await useBestBackend({ importModule: nothingInstalled, threads: 2, fastMatMul: false });
    expect(report.fastMatMulKernels).toEqual([]);
  });
});
