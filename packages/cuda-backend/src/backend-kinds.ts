/**
 * The backends {@link useBestBackend} knows, fastest first:
 * - `cuda`: TensorFlow's C library on an NVIDIA GPU, through the optional peer `@tensorflow/tfjs-node-gpu`.
 * - `native`: TensorFlow's C library on the CPU (all cores), through the optional peer `@tensorflow/tfjs-node`.
 * - `wasm-threads`: tfjs's threaded SIMD WebAssembly build, one XNNPACK thread per core.
 * - `wasm`: tfjs's single-threaded SIMD WebAssembly build (what `@lora/core` uses by default).
 * - `cpu`: tfjs's plain JavaScript backend.
 * - `webgpu`, `webgl` (browsers only): tfjs's GPU backends, `@tensorflow/tfjs-backend-webgpu` / `-webgl`.
 */
export type BackendKind = 'cuda' | 'native' | 'webgpu' | 'webgl' | 'wasm-threads' | 'wasm' | 'cpu';

/** The {@link BackendKind}s Node can use, in the order {@link useBestBackend} tries them there. */
export const BACKEND_ORDER: readonly BackendKind[] = ['cuda', 'native', 'wasm-threads', 'wasm', 'cpu'];

/** The {@link BackendKind}s a browser can use, in the order {@link useBestBackend} tries them there. */
export const BROWSER_BACKEND_ORDER: readonly BackendKind[] = ['webgpu', 'webgl', 'wasm-threads', 'wasm', 'cpu'];

/** tfjs's build pre-creates 8 pthread workers and caps its pool there. */
export const MAX_WASM_THREADS = 8;

/**
 * Why a backend was not used:
 * - `not-installed`: its optional package is not installed.
 * - `load-failed`: its package is installed but threw on load (a missing shared library, a wrong binary).
 * - `no-cuda-device`: tfjs-node-gpu loaded, but TensorFlow found no usable CUDA device.
 * - `init-failed`: it loaded but its backend did not start.
 * - `single-core`: multi-threaded WASM was not tried because only one thread is available or asked for.
 * - `in-use`: the backend it would replace already holds tensors.
 * - `not-supported`: this browser lacks what it needs (`navigator.gpu` for WebGPU; cross-origin
 *   isolation, for `SharedArrayBuffer`, for multi-threaded WASM).
 * - `no-gpu-adapter`: the browser has WebGPU but gave no adapter (no usable GPU, or it is blocklisted).
 */
export type SkipReason = 'not-installed' | 'load-failed' | 'no-cuda-device' | 'init-failed' | 'single-core' | 'in-use' | 'not-supported' | 'no-gpu-adapter';

/** One backend {@link useBestBackend} considered, and what came of it. */
export interface BackendAttempt {
  /** The backend tried (`cuda`, `native`, `wasm-threads`, …); attempts are listed in the order tried. */
  readonly kind: BackendKind;
  /** `selected` for the backend in use; `skipped` with a {@link SkipReason} otherwise. */
  readonly outcome: 'selected' | 'skipped';
  /** Set when skipped. */
  readonly reason?: SkipReason;
  /** One sentence: why it was skipped or chosen, and how to get it when it can be had. */
  readonly message: string;
  /** The error it threw, when it threw one (its message, first line). */
  readonly error?: string;
  /** Time spent on it, in milliseconds. */
  readonly elapsedMs: number;
}

/** The npm package behind each browser GPU kind. */
export const BROWSER_GPU_PACKAGES = {
  /** Registers tfjs's `webgpu` backend when imported (the app imports it, or passes `importModule`). */
  webgpu: '@tensorflow/tfjs-backend-webgpu',
  /** Registers tfjs's `webgl` backend when imported (the app imports it, or passes `importModule`). */
  webgl: '@tensorflow/tfjs-backend-webgl',
} as const satisfies Partial<Record<BackendKind, string>>;

/** The npm package behind each native kind. */
export const NATIVE_PACKAGES = {
  /** Optional peer for kind `cuda`: TensorFlow's C library with CUDA, registered as the `tensorflow` backend. */
  cuda: '@tensorflow/tfjs-node-gpu',
  /** Optional peer for kind `native`: TensorFlow's C library on the CPU, registered as the `tensorflow` backend. */
  native: '@tensorflow/tfjs-node',
} as const satisfies Partial<Record<BackendKind, string>>;

/** A one-line description of each kind, for reports. */
export const BACKEND_DESCRIPTIONS: Readonly<Record<BackendKind, string>> = {
  cuda: 'TensorFlow on an NVIDIA GPU (CUDA), via @tensorflow/tfjs-node-gpu',
  native: 'TensorFlow native on the CPU, via @tensorflow/tfjs-node',
  webgpu: 'WebGPU on the GPU, via @tensorflow/tfjs-backend-webgpu',
  webgl: 'WebGL on the GPU, via @tensorflow/tfjs-backend-webgl',
  'wasm-threads': 'WebAssembly SIMD, multi-threaded (XNNPACK thread pool)',
  wasm: 'WebAssembly SIMD, single thread',
  cpu: 'plain JavaScript',
};
