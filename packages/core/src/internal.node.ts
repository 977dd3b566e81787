// @lora/core/internal in Node (the `node` export condition): installs the node:fs file host too,
// so a package that imports only internal helpers still gets working paths (and the thread host
// of the batched SIMD matMul, and relaxed SIMD for its fused multiply-add build).
import { installNodeFileHost } from './node-file-host.js';
import { installNodeThreadHost } from './node-thread-host.js';
import { installNodeWasmFeatures } from './node-wasm-features.js';

installNodeFileHost();
installNodeThreadHost();
installNodeWasmFeatures();

export * from './internal.js';
