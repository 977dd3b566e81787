// useBestBackend in a browser (the main entry; Node's entry has ./use-best-backend.ts): WebGPU, then
// WebGL, then WASM (threaded only on a cross-origin isolated page), then plain JS, saying why each
// faster one was passed over. No Node built-ins here, so this bundles for a browser.
import * as tf from '@tensorflow/tfjs-core';
import { backendContext, selectFirstBackend, Skip, startedWasm, type BackendContext, type StartedBackend } from './backend-attempt.js';
import { BACKEND_DESCRIPTIONS, BROWSER_BACKEND_ORDER, BROWSER_GPU_PACKAGES, type BackendKind } from './backend-kinds.js';
import { backendOrder } from './backend-order.js';
import { errorLine } from './native.js';
import type { BackendReport, UseBestBackendOptions } from './use-best-backend.js';

/** The parts of `@tensorflow/tfjs-backend-wasm` used here. */
interface WasmPackage {
  setThreadsCount(threads: number): void;
  getThreadsCount(): number;
  setWasmPaths(prefix: string): void;
}

/** The browser globals used here, typed locally (the packages compile without the DOM library). */
interface BrowserScope {
  readonly navigator?: { readonly hardwareConcurrency?: number; readonly gpu?: { requestAdapter(): Promise<unknown> } };
  readonly crossOriginIsolated?: boolean;
}

const scope = globalThis as BrowserScope;

interface Context extends BackendContext {
  readonly wasmPaths: string | undefined;
}

/** Logical cores the browser reports (`navigator.hardwareConcurrency`, 1 when it does not say). */
export function availableCores(): number {
  return Math.max(1, scope.navigator?.hardwareConcurrency ?? 1);
}

async function startGpu(kind: 'webgpu' | 'webgl', context: Context): Promise<StartedBackend> {
  const packageName = BROWSER_GPU_PACKAGES[kind];
  if (kind === 'webgpu' && scope.navigator?.gpu === undefined) throw new Skip('not-supported', 'This browser has no WebGPU (navigator.gpu is missing).');
  // tfjs backends register when their package is imported; the app imports the ones it ships.
  if (tf.findBackendFactory(kind) === null) {
    try {
      await context.importModule(packageName);
    } catch (error) {
      throw new Skip('not-installed', `${packageName} is not loaded: \`import '${packageName}'\` in the app (or pass importModule) to use ${kind}.`, errorLine(error));
    }
    if (tf.findBackendFactory(kind) === null) throw new Skip('not-installed', `${packageName} loaded but registered no "${kind}" backend (two copies of tfjs-core?).`);
  }
  if (kind === 'webgpu' && (await scope.navigator!.gpu!.requestAdapter()) === null) {
    throw new Skip('no-gpu-adapter', 'navigator.gpu.requestAdapter() gave no adapter: no usable GPU, or the browser blocks it.');
  }
  let started: boolean;
  try {
    started = await tf.setBackend(kind);
  } catch (error) {
    throw new Skip('init-failed', `The "${kind}" backend failed to start.`, errorLine(error));
  }
  if (!started) throw new Skip('init-failed', `The "${kind}" backend failed to start (no ${kind === 'webgl' ? 'WebGL context' : 'WebGPU device'}; tfjs logged why).`);
  return {
    backend: kind,
    threads: 1,
    simd: null,
    gpu: true,
    description: BACKEND_DESCRIPTIONS[kind],
    message: `${kind === 'webgpu' ? 'WebGPU' : 'WebGL'} runs the math on the GPU.`,
  };
}

async function startWasm(kind: 'wasm-threads' | 'wasm', context: Context): Promise<StartedBackend> {
  const threads = kind === 'wasm' ? 1 : context.threads;
  if (kind === 'wasm-threads') {
    if (scope.crossOriginIsolated !== true) {
      throw new Skip(
        'not-supported',
        'The page is not cross-origin isolated, so WASM threads (SharedArrayBuffer) are off: serve it with Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp.',
      );
    }
    if (threads < 2) throw new Skip('single-core', context.availableCores < 2 ? 'Only one core is available.' : 'threads is 1: multi-threaded WASM was not asked for.');
  }
  const wasm = (await import('@tensorflow/tfjs-backend-wasm')) as unknown as WasmPackage;
  const running = tf.engine().registry['wasm'];
  if (running === undefined) {
    if (context.wasmPaths !== undefined) wasm.setWasmPaths(context.wasmPaths);
    // tfjs-backend-wasm reads this flag when it starts; threads need SharedArrayBuffer (checked above).
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', kind === 'wasm-threads');
    wasm.setThreadsCount(threads);
  }
  let started: boolean;
  try {
    started = await tf.setBackend('wasm');
  } catch (error) {
    throw new Skip('init-failed', 'The "wasm" backend failed to start (are its .wasm files served? see the wasmPaths option).', errorLine(error));
  }
  if (!started) throw new Skip('init-failed', 'The "wasm" backend failed to start (are its .wasm files served? see the wasmPaths option; tfjs logged why).');
  const actual = Math.max(1, wasm.getThreadsCount());
  if (kind === 'wasm' && actual > 1) throw new Skip('in-use', `The "wasm" backend already runs with ${actual} threads; it is not restarted.`);
  return startedWasm(kind, actual, threads);
}

async function startKind(kind: BackendKind, context: Context): Promise<StartedBackend> {
  switch (kind) {
    case 'webgpu':
    case 'webgl':
      return startGpu(kind, context);
    case 'wasm-threads':
    case 'wasm':
      return startWasm(kind, context);
    case 'cpu':
      return { backend: 'cpu', threads: 1, simd: false, gpu: false, description: BACKEND_DESCRIPTIONS.cpu, message: 'Plain JavaScript, one thread.' };
    case 'cuda':
    case 'native':
      throw new Skip('not-supported', `${BACKEND_DESCRIPTIONS[kind]} needs Node, not a browser.`);
  }
}

/**
 * Select the fastest tensor backend that works in this browser and make it the active tfjs backend,
 * trying in order: WebGPU (when `navigator.gpu` gives an adapter and `@tensorflow/tfjs-backend-webgpu`
 * is imported by the app), WebGL (`@tensorflow/tfjs-backend-webgl`, likewise), multi-threaded WASM
 * (only on a cross-origin isolated page), single-threaded WASM, plain JS. Registers the gradients and
 * kernels `@lora/core` needs (through its `initRuntime`). Call it once, before creating tensors.
 *
 * @param options Preferred backends, fallback, threads, fast matMul, `wasmPaths`; see {@link UseBestBackendOptions}.
 * @returns What was chosen, with every skipped backend and the reason (see `formatBackendReport`).
 * @throws {BackendUnavailableError} when no acceptable backend starts, or `prefer` names a kind a browser lacks.
 * @example
 * import '@tensorflow/tfjs-backend-webgl'; // registers "webgl"; leave it out to skip WebGL
 * import { useBestBackend, formatBackendReport } from '@lora/cuda-backend';
 * console.log(formatBackendReport(await useBestBackend({ wasmPaths: '/wasm/' })));
 */
export async function useBestBackend(options: UseBestBackendOptions = {}): Promise<BackendReport> {
  const started = performance.now();
  const order = backendOrder(options.prefer, options.fallback ?? true, BROWSER_BACKEND_ORDER);
  const context: Context = { ...backendContext(options, availableCores()), wasmPaths: options.wasmPaths };
  return selectFirstBackend(options, { order, context, startBackend: startKind, startedAt: started });
}
