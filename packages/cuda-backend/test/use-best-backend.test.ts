import * as tf from '@tensorflow/tfjs-core';
import { afterEach, describe, expect, it } from 'vitest';
import { fastWasmKernels } from '@lora/core';
import { BackendUnavailableError, backendOrder, BACKEND_ORDER, startWasmBackend, useBestBackend, type ModuleImporter } from '../src/index.node.js';
import { resetNativeStateForTests } from '../src/native.js';
import { nothingInstalled, notInstalledError, registerFakeTensorflowBackend, removeFakeTensorflowBackend } from './helpers.js';

afterEach(() => {
  removeFakeTensorflowBackend();
  resetNativeStateForTests();
});

describe('backendOrder', () => {
  it('tries every backend, fastest first, when nothing is preferred', () => {
    expect(backendOrder(undefined)).toEqual(['cuda', 'native', 'wasm-threads', 'wasm', 'cpu']);
    expect(BACKEND_ORDER).toEqual(backendOrder(undefined));
  });

  it('moves preferred backends to the front and keeps the rest as fallback', () => {
    expect(backendOrder('wasm')).toEqual(['wasm', 'cuda', 'native', 'wasm-threads', 'cpu']);
    expect(backendOrder(['cpu', 'wasm'])).toEqual(['cpu', 'wasm', 'cuda', 'native', 'wasm-threads']);
  });

  it('tries only the preferred backends when fallback is off', () => {
    expect(backendOrder(['native', 'cpu'], false)).toEqual(['native', 'cpu']);
  });

  it('throws a BackendUnavailableError naming the known backends for an unknown one', () => {
    expect(() => backendOrder('gpu' as never)).toThrow(BackendUnavailableError);
    expect(() => backendOrder('gpu' as never)).toThrow(/Known: cuda, native, wasm-threads, wasm, cpu/u);
  });
});

describe('useBestBackend', () => {
  it('skips both native runtimes as not installed and reports why', async () => {
    const report = await useBestBackend({ importModule: nothingInstalled, prefer: ['cuda', 'native', 'cpu'], fallback: false });
    expect(report.kind).toBe('cpu');
    expect(report.attempts.map((attempt) => [attempt.kind, attempt.outcome, attempt.reason])).toEqual([
      ['cuda', 'skipped', 'not-installed'],
      ['native', 'skipped', 'not-installed'],
      ['cpu', 'selected', undefined],
    ]);
    expect(report.attempts[0]!.message).toMatch(/@tensorflow\/tfjs-node-gpu is not installed.*CUDA 11\.2.*pnpm add @tensorflow\/tfjs-node-gpu/u);
    expect(report.attempts[1]!.message).toMatch(/pnpm add @tensorflow\/tfjs-node`/u);
  });

  it('reports a native runtime that throws on load as failed, with its error, and carries on', async () => {
    const throwsOnLoad: ModuleImporter = (specifier) =>
      specifier === '@tensorflow/tfjs-node-gpu'
        ? // What loading tfjs-node-gpu without the CUDA libraries looks like: the binding cannot be opened.
          Promise.reject(new Error('libcudart.so.11.0: cannot open shared object file: No such file or directory'))
        : Promise.reject(
            Object.assign(new Error("Cannot find module '/app/node_modules/@tensorflow/tfjs-node/lib/napi-v8/tfjs_binding.node'"), {
              code: 'MODULE_NOT_FOUND',
            }),
          );
    const report = await useBestBackend({ importModule: throwsOnLoad, prefer: ['cuda', 'native', 'cpu'], fallback: false });
    expect(report.kind).toBe('cpu');
    const [cuda, native] = report.attempts;
    expect(cuda).toMatchObject({ kind: 'cuda', reason: 'load-failed', error: expect.stringMatching(/libcudart/u) });
    expect(cuda!.message).toMatch(/installed but failed to load/u);
    // A missing file inside the package is a load failure, not "not installed".
    expect(native).toMatchObject({ kind: 'native', reason: 'load-failed', error: expect.stringMatching(/tfjs_binding\.node/u) });
  });

  it('reports a package that loads but registers no backend on this tfjs-core', async () => {
    const loadsNothing: ModuleImporter = async () => ({});
    const report = await useBestBackend({ importModule: loadsNothing, prefer: ['native', 'cpu'], fallback: false });
    expect(report.attempts[0]).toMatchObject({ kind: 'native', reason: 'load-failed' });
    expect(report.attempts[0]!.message).toMatch(/another copy of tfjs-core/u);
  });

  it('skips CUDA when tfjs-node-gpu finds no device, then uses its TensorFlow on the CPU', async () => {
    const gpuPackageWithoutDevice: ModuleImporter = async (specifier) => {
      if (specifier !== '@tensorflow/tfjs-node-gpu') throw notInstalledError(specifier);
      await registerFakeTensorflowBackend({ gpu: false });
    };
    const report = await useBestBackend({ importModule: gpuPackageWithoutDevice });
    expect(report.attempts[0]).toMatchObject({ kind: 'cuda', outcome: 'skipped', reason: 'no-cuda-device' });
    expect(report.attempts[0]!.message).toMatch(/no usable CUDA device/u);
    expect(report).toMatchObject({ kind: 'native', backend: 'tensorflow', gpu: false });
    expect(report.description).toMatch(/tfjs-node-gpu \(no CUDA device\)/u);
    expect(tf.getBackend()).toBe('tensorflow');
    expect(Array.from(tf.tidy(() => tf.add(tf.tensor1d([1, 2]), 1).dataSync()))).toEqual([2, 3]);
  });

  it('selects CUDA when tfjs-node-gpu runs on a GPU', async () => {
    const gpuPackage: ModuleImporter = async (specifier) => {
      if (specifier === '@tensorflow/tfjs-node-gpu') await registerFakeTensorflowBackend({ gpu: true });
      else throw notInstalledError(specifier);
    };
    const report = await useBestBackend({ importModule: gpuPackage });
    expect(report).toMatchObject({ kind: 'cuda', backend: 'tensorflow', gpu: true, simd: null });
    expect(report.attempts).toHaveLength(1);
    expect(report.runtime.gradients).toBe(true);
  });

  it('selects tfjs-node when only it is installed', async () => {
    const cpuPackage: ModuleImporter = async (specifier) => {
      if (specifier === '@tensorflow/tfjs-node') await registerFakeTensorflowBackend({ gpu: false });
      else throw notInstalledError(specifier);
    };
    const report = await useBestBackend({ importModule: cpuPackage });
    expect(report.attempts.map((attempt) => attempt.reason ?? attempt.outcome)).toEqual(['not-installed', 'selected']);
    expect(report).toMatchObject({ kind: 'native', backend: 'tensorflow', gpu: false, description: expect.stringMatching(/tfjs-node$/u) });
  });

  it('leaves the native backend its own kernels: core replaces kernels on WASM backends only', async () => {
    const cpuPackage: ModuleImporter = async (specifier) => {
      if (specifier === '@tensorflow/tfjs-node') await registerFakeTensorflowBackend({ gpu: false });
      else throw notInstalledError(specifier);
    };
    const report = await useBestBackend({ importModule: cpuPackage });
    expect(report.backend).toBe('tensorflow');
    expect(report.fastMatMulKernels).toEqual([]);
    expect(fastWasmKernels('tensorflow')).toEqual([]);
    // The stand-in registered the plain-JS kernels under `tensorflow`: each is still that kernel.
    for (const kernelName of ['BatchMatMul', '_FusedMatMul', 'Identity', 'Cast', 'Transpose', 'GatherV2', 'SplitV', 'Concat']) {
      expect(tf.getKernel(kernelName, 'tensorflow')?.kernelFunc, kernelName).toBe(tf.getKernel(kernelName, 'cpu')?.kernelFunc);
    }
  });

  it('throws a BackendUnavailableError listing every reason when nothing acceptable starts', async () => {
    const attempt = useBestBackend({ importModule: nothingInstalled, prefer: ['cuda', 'native'], fallback: false });
    await expect(attempt).rejects.toThrow(BackendUnavailableError);
    const error = (await attempt.then(
      () => null,
      (caught: unknown) => caught,
    )) as BackendUnavailableError;
    expect(error.attempts.map((a) => a.reason)).toEqual(['not-installed', 'not-installed']);
    expect(error.message).toMatch(/cuda: .*native: .*fallback: true/u);
    expect(error.plugin).toBe('@lora/cuda-backend');
  });

  it('rejects a thread count that is not a positive integer', async () => {
    await expect(useBestBackend({ threads: 0 })).rejects.toThrow(/threads must be a positive integer, got 0/u);
  });

  it.each([-5, 0, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 31])('refuses initTimeoutMs %s before trying a backend (setTimeout would fire at once)', async (value) => {
    let imports = 0;
    const counting = (specifier: string): Promise<unknown> => {
      imports += 1;
      return nothingInstalled(specifier);
    };
    await expect(useBestBackend({ initTimeoutMs: value, importModule: counting })).rejects.toThrow(
      `[@lora/cuda-backend] initTimeoutMs must be a number of milliseconds above 0 and at most 2147483647, got ${String(value)}. Pass e.g. { initTimeoutMs: 30000 }.`,
    );
    expect(imports).toBe(0);
    await expect(startWasmBackend({ timeoutMs: value })).rejects.toThrow(/timeoutMs must be a number of milliseconds above 0/u);
  });

  it('uses LORA_BACKEND as the preferred backend when it names one', async () => {
    process.env['LORA_BACKEND'] = 'cpu';
    try {
      const report = await useBestBackend({ importModule: nothingInstalled });
      expect(report.kind).toBe('cpu');
      expect(report.attempts).toHaveLength(1);
    } finally {
      delete process.env['LORA_BACKEND'];
    }
  });
});
