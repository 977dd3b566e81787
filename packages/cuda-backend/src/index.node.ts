// @lora/cuda-backend: the whole public surface.
export { useBestBackend, availableCores, backendOrder } from './use-best-backend.js';
export type { BackendReport, UseBestBackendOptions } from './use-best-backend.js';
export { doctor, formatBackendReport, formatBackendFailure } from './doctor.js';
export type { DoctorOptions } from './doctor.js';
export { BACKEND_ORDER, BACKEND_DESCRIPTIONS, NATIVE_PACKAGES } from './backend-kinds.js';
export type { BackendAttempt, BackendKind, SkipReason } from './backend-kinds.js';
export { BackendInitError, BackendUnavailableError } from './errors.js';
export { startWasmBackend, MAX_WASM_THREADS } from './wasm-threads.js';
export type { StartWasmOptions, WasmStartResult } from './wasm-threads.js';
// The fast WASM matMul lives in @lora/core (initRuntime applies it); re-exported for convenience.
export { useFastWasmMatMul, restoreWasmMatMul, fastWasmMatMulKernels } from '@lora/core';
export type { ModuleImporter } from './native.js';
