import type { BackendAttempt } from './backend-kinds.js';
import type { BackendUnavailableError } from './errors.js';
import type { BackendReport } from './use-best-backend.js';

const REASON_LABELS: Readonly<Record<NonNullable<BackendAttempt['reason']>, string>> = {
  'not-installed': 'not installed',
  'load-failed': 'failed to load',
  'no-cuda-device': 'no CUDA device',
  'init-failed': 'failed to start',
  'single-core': 'single core',
  'in-use': 'in use',
  'not-supported': 'not supported',
  'no-gpu-adapter': 'no GPU adapter',
};

function attemptLine(attempt: BackendAttempt): string {
  const mark = attempt.outcome === 'selected' ? '✓' : '✗';
  const label = attempt.outcome === 'selected' ? 'selected' : REASON_LABELS[attempt.reason ?? 'init-failed'];
  const error = attempt.error ? `\n      error: ${attempt.error}` : '';
  return `  ${mark} ${attempt.kind.padEnd(12)} ${label.padEnd(15)} ${attempt.message}${error}`;
}

/**
 * Format a {@link BackendReport} as the few lines `lora doctor` prints: the backend in use with its
 * threads, SIMD and (on WASM) whether core's kernels use fused multiply-adds, then every backend
 * considered, in order, with why it was skipped.
 *
 * @example
 * console.log(formatBackendReport(await useBestBackend()));
 * // backend: wasm-threads (tfjs "wasm") — WebAssembly SIMD, multi-threaded (XNNPACK thread pool), 2 threads
 * //   threads 2 of 2 cores · SIMD yes · FMA yes · GPU no · fast matMul: BatchMatMul, _FusedMatMul
 * //   ✗ cuda         not installed   @tensorflow/tfjs-node-gpu is not installed (…): `pnpm add @tensorflow/tfjs-node-gpu`.
 * //   …
 */
export function formatBackendReport(report: BackendReport): string {
  const simd = report.simd === null ? 'n/a' : report.simd ? 'yes' : 'no';
  // Whether core's WASM kernels run their fused multiply-add build (relaxed SIMD); WASM only.
  const fma = report.runtime.kernelBuild === null ? '' : ` · FMA ${report.runtime.kernelBuild === 'fma' ? 'yes' : 'no'}`;
  const fast = report.fastMatMulKernels.length > 0 ? report.fastMatMulKernels.join(', ') : 'off';
  return [
    `backend: ${report.kind} (tfjs "${report.backend}") — ${report.description}`,
    `  threads ${report.threads} of ${report.availableCores} cores · SIMD ${simd}${fma} · GPU ${report.gpu ? 'yes' : 'no'} · fast matMul: ${fast} · gradients ${report.runtime.gradients ? 'registered' : 'missing'} · ${report.elapsedMs.toFixed(0)} ms`,
    ...report.attempts.map(attemptLine),
    ...report.warnings.map((warning) => `  ! ${warning}`),
  ].join('\n');
}

/** Format the attempts of a failed selection (a {@link BackendUnavailableError}). */
export function formatBackendFailure(error: BackendUnavailableError): string {
  return ['backend: none could start', ...error.attempts.map(attemptLine)].join('\n');
}

