// @lora/cuda-backend in Node (the `node` export condition): the whole public surface; ./index.ts is a browser's.
export { useBestBackend, availableCores } from './use-best-backend.js';
export { backendOrder } from './backend-order.js';
export type { BackendReport, UseBestBackendOptions } from './use-best-backend.js';
export { doctor } from './doctor.js';
export { formatBackendReport, formatBackendFailure } from './format-report.js';
export type { DoctorOptions } from './doctor.js';
export { BACKEND_ORDER, BROWSER_BACKEND_ORDER, BACKEND_DESCRIPTIONS, BROWSER_GPU_PACKAGES, NATIVE_PACKAGES } from './backend-kinds.js';
export type { BackendAttempt, BackendKind, SkipReason } from './backend-kinds.js';
export { BackendInitError, BackendUnavailableError } from './errors.js';
export { startWasmBackend, MAX_WASM_THREADS } from './wasm-threads.js';
export type { StartWasmOptions, WasmStartResult } from './wasm-threads.js';
// The fast WASM matMul lives in @lora/core (initRuntime applies it); re-exported for convenience.
export { useFastWasmMatMul, restoreWasmMatMul, fastWasmMatMulKernels } from '@lora/core';
export type { ModuleImporter } from './native.js';
