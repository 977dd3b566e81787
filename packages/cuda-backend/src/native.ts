import * as tf from '@tensorflow/tfjs-core';
import { NATIVE_PACKAGES, type SkipReason } from './backend-kinds.js';

/** Loads a module by name; `import()` by default. Tests and bundlers pass their own. */
export type ModuleImporter = (specifier: string) => Promise<unknown>;

/** The default {@link ModuleImporter}: a dynamic `import()` the bundler cannot see through. */
export const defaultImporter: ModuleImporter = (specifier) => import(/* @vite-ignore */ specifier);

/** The tfjs backend name both tfjs-node packages register. */
export const NATIVE_BACKEND_NAME = 'tensorflow';

/** What loading a native package came to. */
export type NativeLoadResult =
  | { readonly ok: true }
  | { readonly ok: false; readonly reason: SkipReason; readonly message: string; readonly error?: string };

/** Which of the two packages registered `tensorflow` in this process, if either did. */
let loadedBy: 'cuda' | 'native' | null = null;

/** The kind whose package registered the `tensorflow` backend in this process, or null. */
export function nativeLoadedBy(): 'cuda' | 'native' | null {
  return loadedBy;
}

/** First line of an error's message. */
export function errorLine(error: unknown): string {
  const text =
    error instanceof Error
      ? error.message
      : typeof error === 'object' && error !== null && 'message' in error
        ? String((error as { message: unknown }).message)
        : String(error);
  return text.split('\n')[0] ?? text;
}

/**
 * Whether `error` says `specifier` itself is missing (not something it imports: a missing native
 * binding or a missing dependency of the package is a load failure, not "not installed").
 */
export function isModuleNotFound(error: unknown, specifier: string): boolean {
  if (typeof error !== 'object' || error === null) return false;
  const code = (error as { code?: unknown }).code;
  if (code !== 'ERR_MODULE_NOT_FOUND' && code !== 'MODULE_NOT_FOUND') return false;
  const message = errorLine(error);
  return message.includes(`'${specifier}'`) || message.includes(`"${specifier}"`);
}

/**
 * Import `@tensorflow/tfjs-node-gpu` (kind `cuda`) or `@tensorflow/tfjs-node` (kind `native`) and
 * check that it registered the `tensorflow` backend on this copy of tfjs-core. Never throws.
 */
export async function loadNativePackage(kind: 'cuda' | 'native', importModule: ModuleImporter): Promise<NativeLoadResult> {
  const specifier = NATIVE_PACKAGES[kind];
  if (loadedBy !== null && loadedBy !== kind) {
    // Both packages register "tensorflow"; loading the second would clash with the first.
    return loadedBy === 'cuda' && kind === 'native'
      ? { ok: true }
      : {
          ok: false,
          reason: 'load-failed',
          message: `${specifier} was not loaded: ${NATIVE_PACKAGES[loadedBy]} already registered the "tensorflow" backend in this process.`,
        };
  }
  try {
    await importModule(specifier);
  } catch (error) {
    if (isModuleNotFound(error, specifier)) {
      return {
        ok: false,
        reason: 'not-installed',
        message: `${specifier} is not installed${kind === 'cuda' ? ' (needs Linux x86-64, an NVIDIA driver, CUDA 11.2 and cuDNN 8.1)' : ''}: \`pnpm add ${specifier}\`.`,
      };
    }
    return {
      ok: false,
      reason: 'load-failed',
      message: `${specifier} is installed but failed to load${kind === 'cuda' ? ' (are the CUDA 11.2 and cuDNN 8.1 libraries on the library path?)' : ''}.`,
      error: errorLine(error),
    };
  }
  if (tf.findBackendFactory(NATIVE_BACKEND_NAME) === null) {
    return {
      ok: false,
      reason: 'load-failed',
      message: `${specifier} loaded but registered no "tensorflow" backend on this @tensorflow/tfjs-core: it uses another copy of tfjs-core. Align their versions (\`pnpm why @tensorflow/tfjs-core\`).`,
    };
  }
  loadedBy = kind;
  return { ok: true };
}

/** Whether the running `tensorflow` backend computes on a GPU (tfjs-node's `isUsingGpuDevice`). */
export function isUsingGpuDevice(backend: tf.KernelBackend): boolean {
  return (backend as unknown as { isUsingGpuDevice?: unknown }).isUsingGpuDevice === true;
}

/** Forget which package registered `tensorflow` (tests only). */
export function resetNativeStateForTests(): void {
  loadedBy = null;
}
