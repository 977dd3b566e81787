// Node-only: the thread host on node:worker_threads that Node's entries of @lora/core install.
// Never imported by the main entry, so browser bundles stay free of Node built-ins.
import { Worker } from 'node:worker_threads';
import { setThreadHost, type ThreadHost } from './thread-host.js';

/**
 * The helper's whole program (CommonJS, evaluated by the Worker): instantiate the kernel's module
 * on the backend's shared memory and run its helper loop. If the loop throws (it never should),
 * the failure word tells a caller waiting on the helper's chunks to compute them itself.
 */
const HELPER_SOURCE = `
const { workerData } = require('node:worker_threads');
const { module, memory, control, failedOffset } = workerData;
try {
  new WebAssembly.Instance(module, { env: { memory } }).exports.helper_loop(control);
} catch (error) {
  const words = new Int32Array(memory.buffer);
  Atomics.store(words, failedOffset / 4, 1);
  Atomics.notify(words, failedOffset / 4);
  throw error;
}
`;

/** The thread host on `node:worker_threads`. */
export const nodeThreadHost: ThreadHost = {
  kind: 'node',
  // Node lets its main thread (and workers) sleep in Atomics.wait.
  mayBlock: true,
  startHelper: ({ module, memory, control, failedOffset }) => {
    const worker = new Worker(HELPER_SOURCE, { eval: true, workerData: { module, memory, control, failedOffset } });
    // The helper only ever serves the thread that calls the kernel: it must not keep Node running.
    worker.unref();
    // A failure is already reported through the failure word; an unhandled 'error' event would
    // crash the process instead.
    worker.on('error', () => undefined);
    return { terminate: () => void worker.terminate() };
  },
};

/** Make core's batched SIMD matMul use a helper thread on `worker_threads`. */
export function installNodeThreadHost(): void {
  setThreadHost(nodeThreadHost);
}
