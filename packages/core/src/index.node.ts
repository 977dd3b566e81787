// @lora/core in Node (the `node` export condition): the same public surface as ./index.ts, with
// the path-based APIs (saveAdapter, loadAdapter(directory), train checkpoints, …) on node:fs, and
// the batched SIMD matMul's helper thread on worker_threads (threaded WASM builds).
import { installNodeFileHost } from './node-file-host.js';
import { installNodeThreadHost } from './node-thread-host.js';

installNodeFileHost();
installNodeThreadHost();

export * from './index.js';
