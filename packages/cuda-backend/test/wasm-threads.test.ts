import { expectTensorsClose, withoutTensorLeaks } from '@lora/core/testing';
import * as tf from '@tensorflow/tfjs-core';
import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { formatBackendReport, startWasmBackend, useBestBackend } from '../src/index.node.js';
import { workerBootstrapSource } from '../src/wasm-threads.js';
import { nothingInstalled } from './helpers.js';

describe('useBestBackend', () => {
  it('starts tfjs\'s threaded SIMD WASM build in Node with the requested threads', async () => {
    const createObjectURL = URL.createObjectURL;
    const cpus = os.cpus;
    const report = await useBestBackend({ importModule: nothingInstalled, threads: 2 });
    expect(report).toMatchObject({ kind: 'wasm-threads', backend: 'wasm', threads: 2, simd: true, gpu: false });
    expect(report.attempts.map((attempt) => `${attempt.kind}:${attempt.reason ?? attempt.outcome}`)).toEqual([
      'cuda:not-installed',
      'native:not-installed',
      'wasm-threads:selected',
    ]);
    expect(report.fastMatMulKernels).toEqual(['BatchMatMul', '_FusedMatMul']);
    expect(tf.getBackend()).toBe('wasm');
    // The patches needed while the build starts are undone.
    expect(URL.createObjectURL).toBe(createObjectURL);
    expect(os.cpus).toBe(cpus);
    expect(formatBackendReport(report)).toMatch(/^backend: wasm-threads \(tfjs "wasm"\).*2 threads\n {2}threads 2 of \d+ cores · SIMD yes · FMA yes/u);
  });

  it('computes the same matMul on the threaded build as the plain JS backend', async () => {
    await withoutTensorLeaks(async () => {
      const a = tf.randomNormal([96, 80], 0, 1, 'float32', 1);
      const b = tf.randomNormal([80, 72], 0, 1, 'float32', 2);
      const onWasm = tf.matMul(a, b);
      const expected = await onWasm.data();
      await tf.setBackend('cpu');
      const onCpu = tf.matMul(a, b);
      expectTensorsClose(onCpu, expected, { atol: 1e-4, rtol: 1e-4 });
      await tf.setBackend('wasm');
      tf.dispose([a, b, onWasm, onCpu]);
    });
  });

  it('keeps the running threaded instance when called again', async () => {
    const before = tf.engine().registry['wasm'];
    const report = await useBestBackend({ importModule: nothingInstalled, threads: 2 });
    expect(report.kind).toBe('wasm-threads');
    expect(tf.engine().registry['wasm']).toBe(before);
  });
});

describe('startWasmBackend', () => {
  it('runs a second, single-threaded instance next to the threaded one and switches between them', async () => {
    const single = await startWasmBackend({ name: 'wasm-single', threads: 1 });
    expect(single).toMatchObject({ name: 'wasm-single', threads: 1, simd: true });
    const x = tf.randomNormal([64, 48], 0, 1, 'float32', 3);
    const w = tf.randomNormal([48, 32], 0, 1, 'float32', 4);
    const onSingle = await tf.matMul(x, w).data();
    await tf.setBackend('wasm');
    const onThreaded = tf.matMul(x, w);
    expectTensorsClose(onThreaded, onSingle, { atol: 1e-5, rtol: 1e-5 });
    tf.dispose([x, w, onThreaded]);
  });
});

describe('workerBootstrapSource', () => {
  it('points the pthread workers at the real worker and main-script files', () => {
    const source = workerBootstrapSource({ packageJson: '/p/package.json', workerScript: '/p/w.js', mainScript: '/p/m.js' });
    expect(source).toContain('createRequire("/p/package.json")');
    expect(source).toContain('require("/p/w.js")');
    expect(source).toContain('URL.createObjectURL = () => mainScript');
  });
});
