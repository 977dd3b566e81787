import * as tf from '@tensorflow/tfjs-core';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { startTimeoutMs } from './backend-attempt.js';
import { MAX_WASM_THREADS } from './backend-kinds.js';
import { BackendInitError } from './errors.js';

/**
 * How tfjs's threaded SIMD WASM build is made to start in Node.
 *
 * tfjs-backend-wasm 4.x ships a pthreads build but never uses it in Node, for three reasons, each
 * handled here for the duration of one backend initialisation and then undone:
 *
 * 1. `WASM_HAS_MULTITHREAD_SUPPORT` is hard-wired to false when `IS_NODE`: we set the flag.
 * 2. Emscripten starts its pthread workers from `blob:` URLs (the worker script and the main script
 *    are Blobs), which Node's `Worker` rejects with `ERR_WORKER_PATH`. `locateFile` turns the worker
 *    script into a Blob URL through `URL.createObjectURL`; while the backend starts we answer that
 *    call with a `data:` URL (a `URL` object, which Node's `Worker` accepts) holding a small ES module
 *    bootstrap. The bootstrap loads Emscripten's own worker code from the installed package's
 *    `wasm-out/` directory and, inside the worker, answers `URL.createObjectURL(mainScriptBlob)`
 *    with the real file `wasm-out/tfjs-backend-wasm-threaded-simd.js`, so `importScripts` reads a file.
 * 3. The C++ side sizes its thread pool as `min(requested, emscripten_num_logical_cores() / 2)` (it
 *    assumes two hyper-threads per core), which is `os.cpus().length / 2` in Node: 1 on a 2-core
 *    machine. While the module is created, `os.cpus()` reports `2 × threads` entries so the pool
 *    gets the requested size; the entries are copies of the real ones.
 */

/** The package whose kernels every WASM backend instance shares. */
const WASM_PACKAGE = '@tensorflow/tfjs-backend-wasm';
const WORKER_SCRIPT = 'wasm-out/tfjs-backend-wasm-threaded-simd.worker.js';
const MAIN_SCRIPT = 'wasm-out/tfjs-backend-wasm-threaded-simd.js';
export { MAX_WASM_THREADS };

/** The parts of `@tensorflow/tfjs-backend-wasm` used here. */
interface WasmPackage {
  setThreadsCount(threads: number): void;
  getThreadsCount(): number;
}

/** What {@link startWasmBackend} reports. */
export interface WasmStartResult {
  /** The tfjs backend name it is registered under. */
  readonly name: string;
  /** Threads in XNNPACK's pool as the backend reports them (1 for the single-threaded build). */
  readonly threads: number;
  /** Whether the SIMD build runs. */
  readonly simd: boolean;
}

/** Options for {@link startWasmBackend}. */
export interface StartWasmOptions {
  /** tfjs backend name (default `wasm`). Another name gets its own instance sharing the WASM kernels. */
  readonly name?: string;
  /** Threads for XNNPACK's pool; 1 starts the single-threaded SIMD build (default 1). */
  readonly threads?: number;
  /** Give up on a backend that has not started after this long (default 30 000 ms; above 0, at most 2³¹ − 1). */
  readonly timeoutMs?: number;
}

type BackendFactory = () => tf.KernelBackend | Promise<tf.KernelBackend>;

let wasmPackage: WasmPackage | null = null;
let originalFactory: BackendFactory | null = null;
const ourFactories = new WeakSet<BackendFactory>();

async function loadWasmPackage(): Promise<WasmPackage> {
  if (wasmPackage) return wasmPackage;
  const loaded = (await import('@tensorflow/tfjs-backend-wasm')) as unknown as WasmPackage;
  wasmPackage = loaded;
  return loaded;
}

/** The factory `@tensorflow/tfjs-backend-wasm` registered, before any of ours replaced it. */
function wasmFactory(): BackendFactory {
  if (originalFactory) return originalFactory;
  const factory = tf.findBackendFactory('wasm') as BackendFactory | null;
  if (factory === null || ourFactories.has(factory)) {
    throw new BackendInitError({
      kind: 'wasm',
      message: `[@lora/cuda-backend] The "wasm" backend factory of ${WASM_PACKAGE} is not registered on this @tensorflow/tfjs-core; two copies of tfjs-core are installed. Deduplicate them (\`pnpm why @tensorflow/tfjs-core\`).`,
    });
  }
  originalFactory = factory;
  return factory;
}

/** Absolute paths of the files the pthread workers need, checked to exist. */
export function threadedWasmFiles(): { packageJson: string; workerScript: string; mainScript: string } {
  const require = createRequire(import.meta.url);
  const packageJson = require.resolve(`${WASM_PACKAGE}/package.json`);
  const root = path.dirname(packageJson);
  const workerScript = path.join(root, WORKER_SCRIPT);
  const mainScript = path.join(root, MAIN_SCRIPT);
  for (const file of [workerScript, mainScript]) {
    if (!existsSync(file)) {
      throw new BackendInitError({
        kind: 'wasm-threads',
        message: `[@lora/cuda-backend] ${file} is missing, so the threaded WASM build cannot start its workers. Reinstall ${WASM_PACKAGE} (a bundler may have left wasm-out/ behind).`,
      });
    }
  }
  return { packageJson, workerScript, mainScript };
}

/** The ES module each pthread worker runs: Emscripten's worker code, with real files for its Blob URLs. */
export function workerBootstrapSource(files: { packageJson: string; workerScript: string; mainScript: string }): string {
  return [
    "import { createRequire } from 'node:module';",
    `const require = createRequire(${JSON.stringify(files.packageJson)});`,
    `const mainScript = ${JSON.stringify(files.mainScript)};`,
    `const { wasmWorkerContents } = require(${JSON.stringify(files.workerScript)});`,
    // Emscripten's worker code is written for a CommonJS scope.
    'globalThis.require = require;',
    'globalThis.__filename = mainScript;',
    // The main thread sends the main script as a Blob; read the same code from its file instead.
    'URL.createObjectURL = () => mainScript;',
    'URL.revokeObjectURL = () => {};',
    // The code is stored in a template literal whose "\\n" escapes became newlines; escape them again, as tfjs does.
    "(0, eval)(wasmWorkerContents.replace(/\\n/g, '\\\\n'));",
  ].join('\n');
}

/** Run `start` with Node patched so the threaded build can start, and undo the patches afterwards. */
async function withThreadedWasmPatches<T>(
  threads: number,
  files: ReturnType<typeof threadedWasmFiles>,
  start: () => Promise<T>,
): Promise<T> {
  const workerUrl = new URL(`data:text/javascript;base64,${Buffer.from(workerBootstrapSource(files)).toString('base64')}`);
  const originalCreateObjectURL = URL.createObjectURL.bind(URL);
  const createObjectURL = URL.createObjectURL;
  const cpus = os.cpus;
  const realCpus = os.cpus();
  // Node's Worker accepts a URL object with a data: URL, but not a string blob: URL.
  URL.createObjectURL = ((object: Blob) =>
    object instanceof Blob && object.type === 'application/javascript' ? workerUrl : originalCreateObjectURL(object)) as typeof URL.createObjectURL;
  os.cpus = () => Array.from({ length: Math.max(2 * threads, realCpus.length) }, (_, index) => realCpus[index % realCpus.length]!);
  try {
    return await start();
  } finally {
    URL.createObjectURL = createObjectURL;
    os.cpus = cpus;
  }
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not start within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Copy every kernel registered for `wasm` to `name`, so another instance can run them. */
function shareWasmKernels(name: string): void {
  for (const kernel of tf.getKernelsForBackend('wasm')) {
    if (tf.getKernel(kernel.kernelName, name) === undefined) tf.registerKernel({ ...kernel, backendName: name });
  }
}

function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === 'object' && error !== null && 'message' in error) return String((error as { message: unknown }).message);
  return String(error);
}

/**
 * Start a tfjs WASM backend instance with `threads` threads (1: the single-threaded SIMD build) and
 * make it the active backend.
 *
 * Under the name `wasm` it replaces a `wasm` instance that holds no tensors yet; under another name
 * it is a second instance sharing the WASM kernels (for comparisons in one process: switching with
 * `tf.setBackend` moves tensors between them).
 *
 * @returns The backend name, the threads XNNPACK's pool really has, and whether SIMD is on.
 * @throws {BackendInitError} when the build cannot start (files missing, workers failing, timeout),
 * or when `wasm` is already in use with live tensors.
 * @example
 * await useBestBackend();                                         // "wasm" with one thread per core
 * await startWasmBackend({ name: 'wasm-single', threads: 1 });   // now active: compare, then
 * await tf.setBackend('wasm');                                    // switch back (tensors move along)
 */
export async function startWasmBackend(options: StartWasmOptions = {}): Promise<WasmStartResult> {
  const name = options.name ?? 'wasm';
  const threads = Math.min(MAX_WASM_THREADS, Math.max(1, Math.floor(options.threads ?? 1)));
  const timeoutMs = startTimeoutMs(options.timeoutMs, 'timeoutMs');
  const kind = threads > 1 ? 'wasm-threads' : 'wasm';
  const wasm = await loadWasmPackage();
  const base = wasmFactory();
  const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true;
  // Checked before anything changes: tfjs would swallow an error thrown inside the factory.
  const files = threads > 1 ? threadedWasmFiles() : null;

  const existing = tf.engine().registry[name];
  if (existing !== undefined) {
    const live = existing.numDataIds();
    if (live > 0) {
      throw new BackendInitError({
        kind,
        message: `[@lora/cuda-backend] The "${name}" backend is already running with ${live} live tensor(s), so it cannot be restarted with ${threads} thread(s). Call useBestBackend() before creating tensors.`,
      });
    }
  }
  const factory: BackendFactory = async () => {
    // Read by tfjs-backend-wasm's init() and its BackendWasm constructor, both inside base().
    tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', threads > 1);
    wasm.setThreadsCount(threads);
    try {
      return files ? await withThreadedWasmPatches(threads, files, async () => base()) : await base();
    } finally {
      tf.env().set('WASM_HAS_MULTITHREAD_SUPPORT', false);
    }
  };
  ourFactories.add(factory);
  if (tf.findBackendFactory(name) !== null) tf.removeBackend(name);
  if (name !== 'wasm') shareWasmKernels(name);
  // Same priority as tfjs-backend-wasm's own registration.
  tf.registerBackend(name, factory, 2);

  let started: boolean;
  try {
    started = await withTimeout(tf.setBackend(name), timeoutMs, `The ${threads}-thread WASM backend`);
  } catch (error) {
    restoreFactory(name, base);
    throw new BackendInitError({ kind, message: `[@lora/cuda-backend] ${kind} failed to start: ${describeError(error)}`, cause: error });
  }
  if (!started) {
    restoreFactory(name, base);
    throw new BackendInitError({
      kind,
      message: `[@lora/cuda-backend] ${kind} failed to start (tfjs logged the cause above).`,
    });
  }
  let actual: number;
  try {
    actual = wasm.getThreadsCount();
  } catch (error) {
    throw new BackendInitError({
      kind,
      message: `[@lora/cuda-backend] The WASM backend started, but not from this copy of ${WASM_PACKAGE}: two copies are installed. Deduplicate them (\`pnpm why ${WASM_PACKAGE}\`).`,
      cause: error,
    });
  }
  unrefPthreadWorkers(name);
  return { name, threads: actual, simd };
}

/**
 * Emscripten `ref()`s the worker of every running pthread, and XNNPACK's pool threads run for the
 * life of the backend, so Node would never exit. They are only ever driven synchronously from the
 * main thread (which blocks until they finish), so they need not keep the event loop alive.
 */
function unrefPthreadWorkers(name: string): void {
  const instance = tf.engine().registry[name] as unknown as { wasm?: { PThread?: { runningWorkers?: { unref?: () => void }[] } } } | undefined;
  for (const worker of instance?.wasm?.PThread?.runningWorkers ?? []) worker.unref?.();
}

/**
 * Threads of the running WASM backend instance registered as `name` (1 for the single-threaded
 * build), or null when no such instance runs.
 */
export function wasmInstanceThreads(name = 'wasm'): number | null {
  const instance = tf.engine().registry[name] as unknown as { wasm?: { tfjs?: { getThreadsCount?: () => number } } } | undefined;
  const count = instance?.wasm?.tfjs?.getThreadsCount?.();
  return typeof count === 'number' ? Math.max(1, count) : null;
}

/** Live tensors held by the backend instance registered as `name` (0 when none runs). */
export function liveDataIds(name: string): number {
  return tf.engine().registry[name]?.numDataIds() ?? 0;
}

/** Put the plain factory back after a failed start, so a later single-threaded start can use it. */
function restoreFactory(name: string, base: BackendFactory): void {
  if (tf.findBackendFactory(name) !== null) tf.removeBackend(name);
  if (name === 'wasm') tf.registerBackend('wasm', base, 2);
}
