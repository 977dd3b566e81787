import type * as tf from '@tensorflow/tfjs-core';

/**
 * A small WebAssembly module of core's (wasm/*.c, built by scripts/build-wasm.mjs) instantiated
 * against the memory of tfjs's WASM backend, so its functions read and write tensors in place.
 * tfjs's threaded build runs on a shared memory, the others on a plain one: each module is linked
 * both ways and the matching binary is chosen per backend.
 */

/** A WebAssembly.Memory (core's tsconfig has no DOM/WebAssembly types): only its buffer is read. */
interface LinearMemory {
  readonly buffer: ArrayBufferLike;
}

/** The parts of the global WebAssembly API used here. */
interface WebAssemblyApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => { exports: Record<string, unknown> };
  instantiate(bytes: Uint8Array, imports: Record<string, Record<string, unknown>>): Promise<{ instance: { exports: Record<string, unknown> } }>;
}

/** The BackendWasm members core's WASM kernels use (public on the class; `wasm` is its Emscripten module). */
export interface WasmHeapBackend extends tf.KernelBackend {
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(info: tf.TensorInfo): tf.backend_util.TypedArray;
  wasm?: { wasmMemory?: LinearMemory; asm?: { memory?: LinearMemory } };
}

/** Byte offset of `info`'s values in `backend`'s memory; read it after the call's allocations (a growing memory replaces the buffer). */
export function heapOffset(backend: WasmHeapBackend, info: tf.TensorInfo): number {
  return backend.typedArrayFromHeap(info).byteOffset;
}

/** Rows of a tensor seen as [rows, last axis]. */
export function leadingRows(info: tf.TensorInfo): number {
  return info.shape.slice(0, -1).reduce((product, dimension) => product * dimension, 1);
}

/**
 * A module's two links, base64: importing a plain memory and a shared one. Without `shared`, the
 * shared link is made from the plain one by {@link withSharedMemoryImport} (the two differ only
 * there when the code uses no atomics; scripts/build-wasm.mjs checks it), so the package carries
 * the module once.
 */
export interface WasmModuleBinaries {
  readonly plain: string;
  readonly shared?: string;
}

/** The import section of core's plain links: one import, env.memory, limits {flags 0, min 2}. */
const PLAIN_MEMORY_IMPORT = [0x01, 0x03, ...'env'.split('').map((c) => c.charCodeAt(0)), 0x06, ...'memory'.split('').map((c) => c.charCodeAt(0)), 0x02, 0x00, 0x02];
/** The same import as a shared memory: limits {flags 3 (shared, has max), min 2, max 65536 pages (4 GiB)}. */
const SHARED_MEMORY_IMPORT = [...PLAIN_MEMORY_IMPORT.slice(0, -2), 0x03, 0x02, 0x80, 0x80, 0x04];

/** `bytes` with its import section (id 2) rewritten from `from` to `to`, every other byte kept. */
function withMemoryImport(bytes: Uint8Array, from: readonly number[], to: readonly number[]): Uint8Array {
  // Header (8 bytes), then sections: id, LEB128 size, contents.
  let offset = 8;
  while (offset < bytes.length) {
    const id = bytes[offset++]!;
    let size = 0;
    for (let shift = 0; ; shift += 7) {
      const byte = bytes[offset++]!;
      size |= (byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) break;
    }
    if (id === 2) {
      const contents = Array.from(bytes.subarray(offset, offset + size));
      // Its size (15 bytes plain, 18 shared) is one LEB byte, so the section starts at offset − 2.
      if (contents.length !== from.length || contents.some((byte, i) => byte !== from[i])) break;
      return Uint8Array.from([...bytes.subarray(0, offset - 2), 2, to.length, ...to, ...bytes.subarray(offset + size)]);
    }
    offset += size;
  }
  throw new Error('[@lora/core] A WASM module of core has an unexpected import section (rebuild it with scripts/build-wasm.mjs).');
}

/**
 * `plain` (a module importing `env.memory` as a plain memory) importing it as a shared memory,
 * as tfjs's threaded build needs: the import section (id 2) is rewritten, every other byte kept.
 * @throws {Error} when the module's import section is not the one core's build produces.
 */
export function withSharedMemoryImport(plain: Uint8Array): Uint8Array {
  return withMemoryImport(plain, PLAIN_MEMORY_IMPORT, SHARED_MEMORY_IMPORT);
}

/**
 * `shared` (a module importing `env.memory` as a shared memory) importing it as a plain memory, as
 * tfjs's single-threaded builds need. Its atomic loads, stores and read-modify-writes work on a
 * plain memory too; `memory.atomic.wait` would trap there, so its two-thread entries must not be
 * called (the batched matMul calls them only on a shared memory).
 * @throws {Error} when the module's import section is not the one core's build produces.
 */
export function withPlainMemoryImport(shared: Uint8Array): Uint8Array {
  return withMemoryImport(shared, SHARED_MEMORY_IMPORT, PLAIN_MEMORY_IMPORT);
}

/** The bytes of a base64 text (`atob`: in browsers and Node alike). */
export function decodeBase64(base64: string): Uint8Array {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** Whether `backend` runs tfjs's WASM kernels (the members core's WASM kernels use). */
export function isWasmBackend(backend: tf.KernelBackend): backend is WasmHeapBackend {
  const candidate = backend as Partial<WasmHeapBackend>;
  return typeof candidate.makeOutput === 'function' && typeof candidate.typedArrayFromHeap === 'function';
}

/**
 * One of core's modules, instantiated once per WASM backend. `exports(backend)` is null where it
 * cannot run (not tfjs's WASM backend, no WASM SIMD in the engine, memory not reachable), and the
 * caller then computes another way.
 */
export class BackendWasmModule<Exports> {
  private readonly instances = new WeakMap<tf.KernelBackend, Exports | null>();

  /**
   * @param binaries The module's two links.
   * @param pick Takes the functions the callers use from the instance's exports.
   */
  constructor(private readonly binaries: WasmModuleBinaries, private readonly pick: (exports: Record<string, unknown>) => Exports) {}

  private parts(backend: tf.KernelBackend): {
    api: WebAssemblyApi;
    bytes: Uint8Array;
    imports: Record<string, Record<string, unknown>>;
  } | null {
    if (!isWasmBackend(backend)) return null;
    // tfjs's threaded build creates its (shared) memory in JS and keeps it as `wasmMemory`; the
    // single-threaded builds export theirs.
    const memory = backend.wasm?.wasmMemory ?? backend.wasm?.asm?.memory;
    const api = (globalThis as { WebAssembly?: WebAssemblyApi }).WebAssembly;
    if (memory === undefined || api === undefined) return null;
    const shared = typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
    const plain = decodeBase64(this.binaries.plain);
    const bytes = !shared ? plain : this.binaries.shared === undefined ? withSharedMemoryImport(plain) : decodeBase64(this.binaries.shared);
    return { api, bytes, imports: { env: { memory } } };
  }

  /**
   * Compile and instantiate the module for `backend` asynchronously (initRuntime does this for
   * the wasm backend): browsers may refuse a synchronous compile of more than 4 KB on the main
   * thread, which {@link exports} would otherwise do on first use.
   * @returns Whether the module runs on `backend`.
   */
  async prepare(backend: tf.KernelBackend): Promise<boolean> {
    if (this.instances.get(backend)) return true;
    const parts = this.parts(backend);
    let exports: Exports | null = null;
    if (parts !== null) {
      try {
        exports = this.pick((await parts.api.instantiate(parts.bytes, parts.imports)).instance.exports);
      } catch {
        exports = null;
      }
    }
    this.instances.set(backend, exports);
    return exports !== null;
  }

  /** The module's functions for `backend` (instantiated synchronously on first use), or null where it cannot run. */
  exports(backend: tf.KernelBackend): Exports | null {
    let exports = this.instances.get(backend);
    if (exports === undefined) {
      const parts = this.parts(backend);
      try {
        exports = parts === null ? null : this.pick(new parts.api.Instance(new parts.api.Module(parts.bytes), parts.imports).exports);
      } catch {
        // No WASM SIMD in this engine, a memory the module cannot import, or a browser refusing a
        // synchronous compile on its main thread.
        exports = null;
      }
      this.instances.set(backend, exports);
    }
    return exports;
  }
}
