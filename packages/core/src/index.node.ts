// @lora/core in Node (the `node` export condition): the same public surface as ./index.ts, with
// the path-based APIs (saveAdapter, loadAdapter(directory), train checkpoints, …) on node:fs, and
// the batched SIMD matMul's helper thread on worker_threads (threaded WASM builds), and relaxed SIMD
// enabled where Node's V8 needs a flag for it (the kernel's fused multiply-add build).
import { installNodeFileHost } from './node-file-host.js';
import { installNodeThreadHost } from './node-thread-host.js';
import { installNodeWasmFeatures } from './node-wasm-features.js';

installNodeFileHost();
installNodeThreadHost();
installNodeWasmFeatures();

export * from './index.js';
