// What both useBestBackend entries share (Node's ./use-best-backend.ts, a browser's ./browser-backend.ts):
// try each kind in order, start the first that works, register core's runtime on it and report why
// the faster ones were passed over. Each entry only says how to start a kind where it runs. Portable
// (no Node built-ins), so the browser entry still bundles for a browser.
import { fastWasmMatMulKernels, initRuntime, restoreWasmKernels, useFastWasmKernels } from '@lora/core';
import * as tf from '@tensorflow/tfjs-core';
import { BACKEND_DESCRIPTIONS, MAX_WASM_THREADS, type BackendAttempt, type BackendKind, type SkipReason } from './backend-kinds.js';
import { BackendUnavailableError } from './errors.js';
import { defaultImporter, errorLine, type ModuleImporter } from './native.js';
import type { BackendReport, UseBestBackendOptions } from './use-best-backend.js';

/** A backend that will not be used, and why: what a {@link StartBackend} throws to pass over a kind. */
export class Skip extends Error {
  constructor(
    readonly reason: SkipReason,
    message: string,
    readonly detail?: string,
  ) {
    super(message);
  }
}

/** A backend that started: what the report says about it. */
export interface StartedBackend {
  /** Its tfjs backend name. */
  readonly backend: string;
  readonly threads: number;
  readonly simd: boolean | null;
  readonly gpu: boolean;
  readonly description: string;
  /** Why it was chosen, one sentence (the selected attempt's message). */
  readonly message: string;
}

/**
 * What a started `wasm` backend reports, from the threads it actually runs (`actual`; `requested`
 * is what `kind` asked for).
 * @throws {Skip} when the threaded build came up with one thread.
 */
export async function startedWasm(kind: 'wasm-threads' | 'wasm', actual: number, requested: number): Promise<StartedBackend> {
  if (kind === 'wasm-threads' && actual < 2) {
    throw new Skip('init-failed', `The threaded WASM build started with ${actual} thread instead of ${requested}.`);
  }
  const simd = (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true;
  return {
    backend: 'wasm',
    threads: actual,
    simd,
    gpu: false,
    description: kind === 'wasm' ? BACKEND_DESCRIPTIONS.wasm : `${BACKEND_DESCRIPTIONS['wasm-threads']}, ${actual} threads`,
    message: kind === 'wasm' ? `Single-threaded WASM${simd ? ' (SIMD)' : ''}.` : `Multi-threaded WASM with ${actual} threads.`,
  };
}

/** What every entry's start functions get; an entry adds its own fields. */
export interface BackendContext {
  /** Threads for multi-threaded WASM, already capped at {@link MAX_WASM_THREADS}. */
  readonly threads: number;
  readonly availableCores: number;
  readonly importModule: ModuleImporter;
}

/** Starts one kind (making it tfjs's active backend) or throws a {@link Skip} saying why it cannot. */
export type StartBackend<Context extends BackendContext> = (kind: BackendKind, context: Context) => Promise<StartedBackend>;

/**
 * The context shared by both entries, from the options.
 * @throws {BackendUnavailableError} when `threads` is not a positive integer.
 */
export function backendContext(options: UseBestBackendOptions, availableCores: number): BackendContext {
  const requestedThreads = options.threads ?? availableCores;
  if (!Number.isInteger(requestedThreads) || requestedThreads < 1) {
    throw new BackendUnavailableError(
      `[@lora/cuda-backend] threads must be a positive integer, got ${String(requestedThreads)}. Pass e.g. { threads: ${availableCores} }.`,
      [],
    );
  }
  return {
    threads: Math.min(requestedThreads, MAX_WASM_THREADS),
    availableCores,
    importModule: options.importModule ?? defaultImporter,
  };
}

// setTimeout fires at once for a delay past 2³¹ − 1 ms (about 24.8 days), as for 0 or a negative one.
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/**
 * A start-up timeout option in ms (default 30 000): a number above 0 and at most 2³¹ − 1, which
 * is what `setTimeout` honours; anything else would time the backend out at once, and it would be
 * passed over as if it had failed.
 * @throws {BackendUnavailableError} naming the option, the value and the range.
 */
export function startTimeoutMs(value: number | undefined, option: string): number {
  if (value === undefined) return 30_000;
  if (typeof value !== 'number' || !(value > 0 && value <= MAX_TIMEOUT_MS)) {
    throw new BackendUnavailableError(`[@lora/cuda-backend] ${option} must be a number of milliseconds above 0 and at most ${MAX_TIMEOUT_MS}, got ${String(value)}. Pass e.g. { ${option}: 30000 }.`, []);
  }
  return value;
}

/** What {@link selectFirstBackend} needs besides the user's options. */
export interface BackendSelection<Context extends BackendContext> {
  /** The kinds to try, in order (from `backendOrder`). */
  readonly order: readonly BackendKind[];
  readonly context: Context;
  readonly startBackend: StartBackend<Context>;
  /** Warnings about the chosen backend (default none). */
  readonly warningsFor?: (kind: BackendKind, started: StartedBackend) => string[];
  /** When the whole selection began (`performance.now()`), for the report's `elapsedMs`. */
  readonly startedAt: number;
}

/**
 * Try `order` until a kind starts; register `@lora/core`'s runtime on it (and the fast WASM kernels
 * unless `options.fastMatMul` is false).
 * @throws {BackendUnavailableError} when none starts, with every attempt.
 */
export async function selectFirstBackend<Context extends BackendContext>(
  options: UseBestBackendOptions,
  selection: BackendSelection<Context>,
): Promise<BackendReport> {
  const attempts: BackendAttempt[] = [];
  for (const kind of selection.order) {
    const attemptStarted = performance.now();
    try {
      const result = await selection.startBackend(kind, selection.context);
      const runtime = await initRuntime({ backend: result.backend });
      if (result.backend === 'wasm') {
        if (options.fastMatMul ?? true) useFastWasmKernels('wasm');
        else restoreWasmKernels('wasm');
      }
      const fastMatMulKernels = result.backend === 'wasm' ? fastWasmMatMulKernels('wasm') : [];
      attempts.push({ kind, outcome: 'selected', message: result.message, elapsedMs: performance.now() - attemptStarted });
      return {
        kind,
        backend: result.backend,
        description: result.description,
        threads: result.threads,
        simd: result.simd,
        gpu: result.gpu,
        availableCores: selection.context.availableCores,
        fastMatMulKernels,
        attempts,
        warnings: selection.warningsFor?.(kind, result) ?? [],
        runtime,
        elapsedMs: performance.now() - selection.startedAt,
      };
    } catch (error) {
      const skip =
        error instanceof Skip ? error : new Skip('init-failed', `${BACKEND_DESCRIPTIONS[kind]} failed to start.`, errorLine(error));
      attempts.push({
        kind,
        outcome: 'skipped',
        reason: skip.reason,
        message: skip.message,
        ...(skip.detail === undefined ? {} : { error: skip.detail }),
        elapsedMs: performance.now() - attemptStarted,
      });
    }
  }
  throw new BackendUnavailableError(
    `[@lora/cuda-backend] No backend could start. ${attempts.map((attempt) => `${attempt.kind}: ${attempt.message}${attempt.error ? ` (${attempt.error})` : ''}`).join(' ')}${
      options.fallback === false ? ' Allow the other backends with { fallback: true }.' : ''
    }`,
    attempts,
  );
}
