import type { RuntimeReport } from '@lora/core';
import * as tf from '@tensorflow/tfjs-core';
import os from 'node:os';
import { backendContext, selectFirstBackend, Skip, startedWasm, startTimeoutMs, type BackendContext, type StartedBackend } from './backend-attempt.js';
import { BACKEND_DESCRIPTIONS, type BackendAttempt, type BackendKind } from './backend-kinds.js';
import { BackendInitError } from './errors.js';
import { errorLine, isUsingGpuDevice, loadNativePackage, NATIVE_BACKEND_NAME, nativeLoadedBy, type ModuleImporter } from './native.js';
import { backendOrder, isBackendKind } from './backend-order.js';
import { liveDataIds, MAX_WASM_THREADS, startWasmBackend, wasmInstanceThreads } from './wasm-threads.js';

/** Options for {@link useBestBackend}. */
export interface UseBestBackendOptions {
  /**
   * Backend(s) to try first, in order. The others follow in the default order unless `fallback` is
   * false. Default: the environment variable `LORA_BACKEND` when it names a {@link BackendKind},
   * else the default order `cuda`, `native`, `wasm-threads`, `wasm`, `cpu`.
   */
  readonly prefer?: BackendKind | readonly BackendKind[];
  /** Try the remaining backends when the preferred ones cannot start (default true). */
  readonly fallback?: boolean;
  /**
   * Threads for multi-threaded WASM (default: the cores Node reports available,
   * `os.availableParallelism()`; tfjs's build caps it at 8). 1 skips multi-threaded WASM.
   */
  readonly threads?: number;
  /**
   * Run transposed and stacked matMuls of the WASM backends on XNNPACK instead of tfjs's scalar
   * loop, and use core's data-movement kernels (`useFastWasmKernels`) (default true). See the
   * README's "Fast matMul" section.
   */
  readonly fastMatMul?: boolean;
  /** Loads the optional native packages (default: `import()`). For tests, and bundlers that need a static map. */
  readonly importModule?: ModuleImporter;
  /** Give up on a backend that has not started after this long, in ms (default 30 000; above 0, at most 2³¹ − 1: a bad value is refused, not run as an instant timeout). */
  readonly initTimeoutMs?: number;
  /**
   * Browser only: the URL prefix (ending in `/`) the `.wasm` files of `@tensorflow/tfjs-backend-wasm`
   * are served from, passed to its `setWasmPaths` (default: tfjs's, beside the page's script).
   */
  readonly wasmPaths?: string;
}

/** What {@link useBestBackend} chose, and why it passed over the backends before it. */
export interface BackendReport {
  /** The backend in use. */
  readonly kind: BackendKind;
  /** Its tfjs backend name (`tensorflow`, `wasm` or `cpu`): what `tf.getBackend()` returns. */
  readonly backend: string;
  /** One line saying what runs the math. */
  readonly description: string;
  /** Threads doing the math: XNNPACK's pool for WASM, the cores TensorFlow may use for `native`/`cuda` host work, 1 for `cpu`. */
  readonly threads: number;
  /** Whether WebAssembly SIMD is used; null where it does not apply (native TensorFlow). */
  readonly simd: boolean | null;
  /** Whether the math runs on a GPU. */
  readonly gpu: boolean;
  /** Cores Node reports available to this process (in a browser, `navigator.hardwareConcurrency`). */
  readonly availableCores: number;
  /** WASM matMul kernels routed to XNNPACK by the fast path (empty when off or not WASM). */
  readonly fastMatMulKernels: readonly string[];
  /** Every backend considered, in order: the skipped ones with their reason, the chosen one last. */
  readonly attempts: readonly BackendAttempt[];
  /**
   * Things worth knowing about the choice, e.g. that other processes keep the cores busy (the
   * 1-minute load average), in which case a thread pool competes with them and `threads: 1` may be faster.
   */
  readonly warnings: readonly string[];
  /** `@lora/core`'s runtime report (gradients registered, missing kernels filled). */
  readonly runtime: RuntimeReport;
  /** Time the whole selection took, in ms. */
  readonly elapsedMs: number;
}

interface Context extends BackendContext {
  readonly initTimeoutMs: number;
}

/** Cores available to this process (`os.availableParallelism()`, else the number of CPUs). */
export function availableCores(): number {
  const parallelism = (os as { availableParallelism?: () => number }).availableParallelism?.();
  return Math.max(1, parallelism ?? os.cpus().length);
}

async function startNative(kind: 'cuda' | 'native', context: Context): Promise<StartedBackend> {
  const reuseGpuPackage = kind === 'native' && nativeLoadedBy() === 'cuda';
  const loaded = await loadNativePackage(kind, context.importModule);
  if (!loaded.ok) throw new Skip(loaded.reason, loaded.message, loaded.error);
  let started: boolean;
  try {
    started = await tf.setBackend(NATIVE_BACKEND_NAME);
  } catch (error) {
    throw new Skip('init-failed', `The "tensorflow" backend of ${kind === 'cuda' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node'} failed to start.`, errorLine(error));
  }
  if (!started) throw new Skip('init-failed', 'The "tensorflow" backend failed to start (tfjs logged the cause above).');
  const gpu = isUsingGpuDevice(tf.backend());
  if (kind === 'cuda' && !gpu) {
    throw new Skip(
      'no-cuda-device',
      '@tensorflow/tfjs-node-gpu loaded, but TensorFlow found no usable CUDA device (check `nvidia-smi`, the driver, and CUDA_VISIBLE_DEVICES).',
    );
  }
  return {
    backend: NATIVE_BACKEND_NAME,
    threads: context.availableCores,
    simd: null,
    gpu,
    description: reuseGpuPackage ? 'TensorFlow native on the CPU, via @tensorflow/tfjs-node-gpu (no CUDA device)' : BACKEND_DESCRIPTIONS[kind],
    message: kind === 'cuda' ? 'TensorFlow runs on the GPU.' : 'TensorFlow native uses every core.',
  };
}

async function startWasm(kind: 'wasm-threads' | 'wasm', context: Context): Promise<StartedBackend> {
  const threads = kind === 'wasm' ? 1 : context.threads;
  if (kind === 'wasm-threads' && threads < 2) {
    throw new Skip(
      'single-core',
      context.availableCores < 2 ? 'Only one core is available.' : 'threads is 1: multi-threaded WASM was not asked for.',
    );
  }
  const running = wasmInstanceThreads('wasm');
  const wanted = (count: number): boolean => (kind === 'wasm' ? count === 1 : count >= 2);
  if (running !== null && liveDataIds('wasm') > 0) {
    // The running instance holds tensors: use it if it is the right kind, never restart it.
    if (!wanted(running)) {
      throw new Skip(
        'in-use',
        `The "wasm" backend already runs with ${running} thread(s) and holds ${liveDataIds('wasm')} tensor(s). Call useBestBackend() before creating tensors.`,
      );
    }
    await tf.setBackend('wasm');
  } else if (running === null || running !== Math.min(threads, MAX_WASM_THREADS)) {
    try {
      await startWasmBackend({ name: 'wasm', threads, timeoutMs: context.initTimeoutMs });
    } catch (error) {
      throw new Skip('init-failed', error instanceof BackendInitError ? error.message.replace(/^\[@lora\/cuda-backend\] /u, '') : 'WASM failed to start.', error instanceof BackendInitError ? undefined : errorLine(error));
    }
  } else {
    await tf.setBackend('wasm');
  }
  return startedWasm(kind, wasmInstanceThreads('wasm') ?? 1, threads);
}

async function startKind(kind: BackendKind, context: Context): Promise<StartedBackend> {
  switch (kind) {
    case 'cuda':
    case 'native':
      return startNative(kind, context);
    case 'wasm-threads':
    case 'wasm':
      return startWasm(kind, context);
    case 'webgpu':
    case 'webgl':
      throw new Skip('not-supported', `${BACKEND_DESCRIPTIONS[kind]} runs in a browser, not in Node.`);
    case 'cpu':
      return { backend: 'cpu', threads: 1, simd: false, gpu: false, description: BACKEND_DESCRIPTIONS.cpu, message: 'Plain JavaScript, one thread.' };
  }
}

/**
 * Select the fastest tensor backend that works here and make it the active tfjs backend, trying in
 * order: `@tensorflow/tfjs-node-gpu` (CUDA), `@tensorflow/tfjs-node` (native CPU), multi-threaded
 * WASM (one thread per available core), single-threaded WASM, plain JS. The native runtimes are
 * optional peers loaded with `import()`; one that is missing, throws on load or finds no CUDA device
 * is skipped, and the report says why. Also registers the gradients and kernels `@lora/core` needs
 * (through its `initRuntime`). Call it once, before creating tensors.
 *
 * The process-wide effects are tfjs's own: the active backend, its registered kernels (the WASM
 * fast matMul path, see `fastMatMul`), and, while multi-threaded WASM starts (about 0.2 s),
 * `URL.createObjectURL` and `os.cpus` are wrapped and then restored.
 *
 * @param options Preferred backends, fallback, thread count, fast matMul; see {@link UseBestBackendOptions}.
 * @returns What was chosen, with every skipped backend and the reason (see {@link formatBackendReport}).
 * @throws {BackendUnavailableError} when no acceptable backend starts (its `attempts` say why each failed),
 * or when `prefer` names an unknown backend, or `threads` or `initTimeoutMs` is out of range.
 * @example
 * import { useBestBackend, formatBackendReport } from '@lora/cuda-backend';
 * const report = await useBestBackend();          // e.g. kind 'wasm-threads', 2 threads
 * console.log(formatBackendReport(report));
 * await useBestBackend({ prefer: 'cuda', fallback: false }); // GPU or throw
 */
export async function useBestBackend(options: UseBestBackendOptions = {}): Promise<BackendReport> {
  const started = performance.now();
  const fromEnvironment = process.env['LORA_BACKEND'];
  const prefer = options.prefer ?? (isBackendKind(fromEnvironment) ? fromEnvironment : undefined);
  const order = backendOrder(prefer, options.fallback ?? true);
  const cores = availableCores();
  const context: Context = { ...backendContext(options, cores), initTimeoutMs: startTimeoutMs(options.initTimeoutMs, 'initTimeoutMs') };
  return selectFirstBackend(options, {
    order,
    context,
    startBackend: startKind,
    warningsFor: (kind, result) => {
      const load = os.loadavg()[0] ?? 0;
      // Other work worth a core or more: a thread pool then competes with it for the cores.
      return kind === 'wasm-threads' && load >= cores - result.threads + 1
        ? [
            `The 1-minute load average is ${load.toFixed(1)} on ${cores} cores: if other processes keep them busy, ${result.threads} WASM threads compete with them and { threads: 1 } can be faster (pnpm bench measures both).`,
          ]
        : [];
    },
    startedAt: started,
  });
}
