import * as tf from '@tensorflow/tfjs-core';
import { LoraError } from './errors.js';
import { registerMissingGradientKernels } from './kernels.js';
import { useFastWasmKernels } from './wasm-kernels.js';
import { prepareFusedKernels } from './wasm-fused-kernels.js';
import { prepareSimdBatchMatMul, simdKernelBuild } from './wasm-simd-matmul.js';
import type { SimdKernelBuild } from './wasm-simd-matmul.js';

/** Backends this package can set up by itself. Others (e.g. `tensorflow` from tfjs-node) are used when already registered. */
export type BuiltinBackendName = 'wasm' | 'cpu';

/** What `initRuntime` picked and why. */
export interface RuntimeReport {
  /** The active tfjs backend, e.g. `wasm`. */
  readonly backend: string;
  /** What was asked for: an explicit option, `LORA_BACKEND`, or `auto`. */
  readonly requested: string;
  /** Where the request came from. */
  readonly source: 'option' | 'environment' | 'default';
  /** One sentence on why this backend was chosen. */
  readonly reason: string;
  /** Backends tried before the chosen one, with why each was not used. */
  readonly skipped: readonly {
    /** The backend's name, e.g. `wasm`. */
    readonly backend: string;
    /** Why it could not start: the message of the error its setup threw. */
    readonly reason: string;
  }[];
  /** Whether gradient functions for every tfjs op are registered (needed for training). */
  readonly gradients: boolean;
  /**
   * Which build of core's own WASM kernel module runs on the backend: `fma` (products with fused
   * multiply-adds, where the engine accepts relaxed SIMD), `plain`, or null (another backend, or no
   * kernel could start).
   */
  readonly kernelBuild: SimdKernelBuild | null;
}

/** Options for {@link initRuntime}. */
export interface RuntimeOptions {
  /**
   * Backend to use: `auto` (default: `wasm`, falling back to `cpu`), `wasm`, `cpu`, or the name of a backend
   * registered by another package (`tensorflow` after `@lora/cuda-backend` loaded tfjs-node). The environment
   * variable `LORA_BACKEND` is used when this is not given.
   */
  readonly backend?: string;
}

let gradientsLoaded: Promise<void> | null = null;

/**
 * Register gradient functions for every tfjs op. tfjs-core's Node build registers none until its
 * `register_all_gradients` module is imported (register-gradients.ts).
 */
export function ensureGradients(): Promise<void> {
  gradientsLoaded ??= import('./register-gradients.js').then(
    () => undefined,
    (error: unknown) => {
      gradientsLoaded = null;
      throw new LoraError(
        "[@lora/core] Could not load tfjs-core's gradient registrations or @tensorflow/tfjs-backend-cpu, dependencies of @lora/core that training needs; the install is incomplete: reinstall @lora/core and its peer @tensorflow/tfjs-core.",
        { cause: error },
      );
    },
  );
  return gradientsLoaded;
}

async function setUpBuiltin(name: BuiltinBackendName): Promise<void> {
  if (name === 'wasm') await import('@tensorflow/tfjs-backend-wasm');
  else await import('@tensorflow/tfjs-backend-cpu');
}

/**
 * Set up the tensor runtime: register gradients, select a backend and wait until it is ready.
 * Safe to call more than once; a later call may switch backends.
 *
 * @throws {LoraError} when an explicitly named backend is unknown or fails to start.
 * @example
 * const report = await initRuntime();            // wasm in Node, cpu as fallback
 * console.log(`${report.backend}: ${report.reason}`);
 */
export async function initRuntime(options: RuntimeOptions = {}): Promise<RuntimeReport> {
  const fromEnvironment = typeof process !== 'undefined' ? process.env?.['LORA_BACKEND'] : undefined;
  const requested = options.backend ?? (fromEnvironment && fromEnvironment.length > 0 ? fromEnvironment : 'auto');
  const source: RuntimeReport['source'] = options.backend ? 'option' : fromEnvironment ? 'environment' : 'default';
  await ensureGradients();

  const skipped: { backend: string; reason: string }[] = [];
  const candidates: string[] = requested === 'auto' ? ['wasm', 'cpu'] : [requested];
  for (const candidate of candidates) {
    try {
      if (candidate === 'wasm' || candidate === 'cpu') await setUpBuiltin(candidate);
      if (tf.findBackendFactory(candidate) === null && tf.findBackend(candidate) === null) {
        throw new LoraError(
          `[@lora/core] Unknown backend "${candidate}". Built in: wasm, cpu. For tfjs-node (tensorflow) or CUDA, use @lora/cuda-backend's useBestBackend().`,
        );
      }
      const ok = await tf.setBackend(candidate);
      if (!ok) throw new LoraError(`[@lora/core] Backend "${candidate}" failed to initialise.`);
      await tf.ready();
      registerMissingGradientKernels(candidate);
      // WASM's matMul is only fast untransposed and unbatched, and its data-movement kernels copy
      // value by value: route both through core's kernels.
      if (candidate === 'wasm') {
        await prepareSimdBatchMatMul(tf.backend());
        await prepareFusedKernels(tf.backend());
        useFastWasmKernels('wasm');
      }
      const reason =
        requested === 'auto'
          ? candidate === 'wasm'
            ? 'WASM (SIMD) is the fastest backend built in for Node.'
            : 'plain JS CPU backend: WASM could not start.'
          : `named by ${source === 'option' ? 'the backend option' : 'LORA_BACKEND'}.`;
      return { backend: tf.getBackend(), requested, source, reason, skipped, gradients: true, kernelBuild: simdKernelBuild(tf.backend()) };
    } catch (error) {
      if (requested !== 'auto') {
        throw error instanceof LoraError
          ? error
          : new LoraError(`[@lora/core] Backend "${candidate}" failed to start: ${String(error)}`, { cause: error });
      }
      skipped.push({ backend: candidate, reason: error instanceof Error ? error.message : String(error) });
    }
  }
  throw new LoraError(
    `[@lora/core] No backend could start: ${skipped.map((s) => `${s.backend}: ${s.reason}`).join('; ')}.`,
  );
}
