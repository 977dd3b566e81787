import { describe, expect, it } from 'vitest';
import { BackendUnavailableError, doctor, formatBackendFailure, formatBackendReport, type BackendReport } from '../src/index.node.js';
import { nothingInstalled } from './helpers.js';

const report: BackendReport = {
  kind: 'wasm-threads',
  backend: 'wasm',
  description: 'WebAssembly SIMD, multi-threaded (XNNPACK thread pool), 2 threads',
  threads: 2,
  simd: true,
  gpu: false,
  availableCores: 2,
  fastMatMulKernels: ['BatchMatMul', '_FusedMatMul'],
  attempts: [
    { kind: 'cuda', outcome: 'skipped', reason: 'load-failed', message: '@tensorflow/tfjs-node-gpu is installed but failed to load.', error: 'libcudart.so.11.0: cannot open shared object file', elapsedMs: 3 },
    { kind: 'native', outcome: 'skipped', reason: 'not-installed', message: '@tensorflow/tfjs-node is not installed: `pnpm add @tensorflow/tfjs-node`.', elapsedMs: 1 },
    { kind: 'wasm-threads', outcome: 'selected', message: 'Multi-threaded WASM with 2 threads.', elapsedMs: 250 },
  ],
  warnings: [],
  runtime: { backend: 'wasm', requested: 'wasm', source: 'option', reason: 'named by the backend option.', skipped: [], gradients: true, kernelBuild: 'fma' },
  elapsedMs: 260,
};

describe('formatBackendReport', () => {
  it('prints the backend with threads and SIMD, then why each faster backend was skipped', () => {
    expect(formatBackendReport(report)).toBe(
      [
        'backend: wasm-threads (tfjs "wasm") — WebAssembly SIMD, multi-threaded (XNNPACK thread pool), 2 threads',
        '  threads 2 of 2 cores · SIMD yes · FMA yes · GPU no · fast matMul: BatchMatMul, _FusedMatMul · gradients registered · 260 ms',
        '  ✗ cuda         failed to load  @tensorflow/tfjs-node-gpu is installed but failed to load.',
        '      error: libcudart.so.11.0: cannot open shared object file',
        '  ✗ native       not installed   @tensorflow/tfjs-node is not installed: `pnpm add @tensorflow/tfjs-node`.',
        '  ✓ wasm-threads selected        Multi-threaded WASM with 2 threads.',
      ].join('\n'),
    );
  });

  it("says FMA no where core's kernels run their plain build, and nothing of FMA off WASM", () => {
    expect(formatBackendReport({ ...report, runtime: { ...report.runtime, kernelBuild: 'plain' } })).toContain('SIMD yes · FMA no · GPU no');
    expect(formatBackendReport({ ...report, runtime: { ...report.runtime, kernelBuild: null } })).toContain('SIMD yes · GPU no');
  });

  it('ends with the warnings', () => {
    expect(formatBackendReport({ ...report, warnings: ['The 1-minute load average is 2.0 on 2 cores.'] }).split('\n').at(-1)).toBe(
      '  ! The 1-minute load average is 2.0 on 2 cores.',
    );
  });
});

describe('formatBackendFailure', () => {
  it('lists every reason when nothing could start', () => {
    const error = new BackendUnavailableError('none', report.attempts.slice(0, 2));
    expect(formatBackendFailure(error).split('\n')[0]).toBe('backend: none could start');
    expect(formatBackendFailure(error)).toMatch(/not installed/u);
  });
});

describe('doctor', () => {
  it('prints the report through the given writer and returns it', async () => {
    const lines: string[] = [];
    const result = await doctor({ importModule: nothingInstalled, prefer: 'cpu', write: (text) => lines.push(text) });
    expect(result.kind).toBe('cpu');
    expect(lines.join('\n')).toMatch(/^backend: cpu \(tfjs "cpu"\) — plain JavaScript/u);
  });

  it('prints every reason and rethrows when no backend starts', async () => {
    const lines: string[] = [];
    await expect(doctor({ importModule: nothingInstalled, prefer: ['cuda', 'native'], fallback: false, write: (text) => lines.push(text) })).rejects.toThrow(
      BackendUnavailableError,
    );
    expect(lines.join('\n')).toMatch(/none could start[\s\S]*cuda[\s\S]*native/u);
  });
});
