// @lora/cuda-backend in a browser (the default export condition): the surface of ./index.node.ts
// less what needs Node (doctor, startWasmBackend); useBestBackend picks WebGPU, WebGL or WASM.
export { useBestBackend, availableCores } from './browser-backend.js';
export type { BackendReport, UseBestBackendOptions } from './use-best-backend.js';
export { backendOrder } from './backend-order.js';
export { formatBackendReport, formatBackendFailure } from './format-report.js';
export { BACKEND_ORDER, BROWSER_BACKEND_ORDER, BACKEND_DESCRIPTIONS, BROWSER_GPU_PACKAGES, NATIVE_PACKAGES, MAX_WASM_THREADS } from './backend-kinds.js';
export type { BackendAttempt, BackendKind, SkipReason } from './backend-kinds.js';
export { BackendInitError, BackendUnavailableError } from './errors.js';
// The fast WASM matMul lives in @lora/core (initRuntime applies it); re-exported for convenience.
export { useFastWasmMatMul, restoreWasmMatMul, fastWasmMatMulKernels } from '@lora/core';
export type { ModuleImporter } from './native.js';
