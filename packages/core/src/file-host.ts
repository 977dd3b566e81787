import { LoraError } from './errors.js';

/**
 * The file-system operations the path-based APIs of `@lora/*` use (`saveAdapter(model, directory)`,
 * `loadPretrained(directory)`, trainer checkpoints). The portable code calls these instead of
 * importing `node:fs`, so every package's main entry bundles for a browser; Node's entry of
 * `@lora/core` installs an implementation on `node:fs` (see `node-file-host.ts`). In a runtime
 * without one, each operation throws a {@link LoraError} saying to pass bytes instead.
 */
export interface FileHost {
  /** Which host this is, for messages: `node` or `none`. */
  readonly kind: string;
  readFile(file: string): Promise<Uint8Array>;
  readText(file: string): Promise<string>;
  exists(file: string): Promise<boolean>;
  mkdir(directory: string): Promise<void>;
  /** Remove a file; a missing one is not an error. */
  remove(file: string): Promise<void>;
  /** Write via a temporary file, fsync and rename, then flush the directory (see `writeFileAtomic`). */
  writeFileAtomic(target: string, data: Uint8Array | string | Iterable<Uint8Array | string>): Promise<void>;
  syncDirectory(directory: string): Promise<void>;
  /** Join path segments with the platform's separator. */
  join(...segments: string[]): string;
  dirname(file: string): string;
  /** Resolve a package's file (e.g. `@lora/base-moby/package.json`) as Node's `require.resolve` from `parentUrl`. */
  resolvePackageFile(specifier: string, parentUrl: string): string;
}

// On globalThis so the ESM and CJS builds (and every chunk) of @lora/core share one host.
const HOST = Symbol.for('@lora/core.fileHost');

function noFileSystemError(operation: string, target: string): LoraError {
  return new LoraError(
    `[@lora/core] Cannot ${operation} ${target}: this runtime has no file system (a browser?). ` +
      'Pass bytes instead (adapters: serializeAdapter() / loadAdapter(model, { files }) with Uint8Array, ArrayBuffer, File/Blob or a fetch() Response; weights: parseSafetensors(bytes)), or run in Node.',
  );
}

/** The host of a runtime without a file system: every operation throws and says what to do instead. */
const NO_FILE_SYSTEM: FileHost = {
  kind: 'none',
  readFile: (file) => Promise.reject(noFileSystemError('read', file)),
  readText: (file) => Promise.reject(noFileSystemError('read', file)),
  exists: (file) => Promise.reject(noFileSystemError('look for', file)),
  mkdir: (directory) => Promise.reject(noFileSystemError('create', directory)),
  remove: (file) => Promise.reject(noFileSystemError('remove', file)),
  writeFileAtomic: (target) => Promise.reject(noFileSystemError('write', target)),
  syncDirectory: (directory) => Promise.reject(noFileSystemError('sync', directory)),
  // Paths are only formatted for messages here; the operation on them throws.
  join: (...segments) => segments.filter((segment) => segment !== '').join('/'),
  dirname: (file) => (file.includes('/') ? file.slice(0, file.lastIndexOf('/')) || '/' : '.'),
  resolvePackageFile: (specifier) => {
    throw noFileSystemError('resolve', specifier);
  },
};

/** The installed file host (Node's when `@lora/core` was loaded in Node), or one that throws on every operation. */
export function fileHost(): FileHost {
  return ((globalThis as Record<symbol, unknown>)[HOST] as FileHost | undefined) ?? NO_FILE_SYSTEM;
}

/** Install a file host (Node's entry does this on load); null restores the one that throws. */
export function setFileHost(host: FileHost | null): void {
  (globalThis as Record<symbol, unknown>)[HOST] = host ?? undefined;
}
