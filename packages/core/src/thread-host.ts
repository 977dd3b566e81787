/**
 * How core's batched SIMD matMul starts its helper thread (wasm-simd-matmul.ts). The portable
 * code never imports `node:worker_threads`, so every package's main entry bundles for a browser;
 * Node's entries of `@lora/core` install a host on `worker_threads` (see `node-thread-host.ts`).
 * Without a host (a browser: its main thread may not block in `Atomics.wait`) the kernel runs on
 * the calling thread alone.
 */
export interface ThreadHost {
  /** Which host this is, for messages: `node`. */
  readonly kind: string;
  /** Whether the thread that calls the kernel may sleep in `Atomics.wait` (else it spins). */
  readonly mayBlock: boolean;
  /**
   * Start a thread that instantiates `module` on the shared `memory` and calls its export
   * `helper_loop(control)`, which returns only when told to stop. If that call throws, the thread
   * sets the 32-bit word at byte `failedOffset` of `memory` to 1 (callers waiting on the helper
   * then finish alone). The thread must not keep the process alive.
   */
  startHelper(options: { module: object; memory: object; control: number; failedOffset: number }): HelperThread;
}

/** A started helper thread. */
export interface HelperThread {
  /** End the thread (after `helper_stop` asked its loop to return). */
  terminate(): void;
}

// On globalThis so the ESM and CJS builds (and every chunk) of @lora/core share one host.
const HOST = Symbol.for('@lora/core.threadHost');

/** The installed thread host (Node's when `@lora/core` was loaded in Node), or null. */
export function threadHost(): ThreadHost | null {
  return ((globalThis as Record<symbol, unknown>)[HOST] as ThreadHost | undefined) ?? null;
}

/** Install a thread host (Node's entry does this on load); null removes it (kernels start no helper). */
export function setThreadHost(host: ThreadHost | null): void {
  (globalThis as Record<symbol, unknown>)[HOST] = host ?? undefined;
}
