// The kernel module's plain build (a multiply then an add in its products, no relaxed SIMD: what
// Safari, Firefox and older engines run), which Node would not run otherwise: with LORA_WASM_FMA=0
// set before this file's WASM backend makes its kernel, the suites of everything the module computes
// run again on it. Each test file has a module registry and backend of its own, so the other files
// keep the fused multiply-add build (asserted in wasm-simd-matmul.test.ts).
import * as tf from '@tensorflow/tfjs-core';
import { expect, it } from 'vitest';
import { simdKernelBuild } from '../src/wasm-simd-matmul.js';

process.env['LORA_WASM_FMA'] = '0';
await import('./wasm-simd-matmul.test.js');
await import('./wasm-simd-matmul-threads.test.js');
await import('./low-rank-train.test.js');
await import('./low-rank-linear-train.test.js');
await import('./causal-products.test.js');
await import('./causal-attention.test.js');

it('runs the plain build of the kernel module here', () => {
  expect(tf.getBackend()).toBe('wasm');
  expect(simdKernelBuild(tf.backend())).toBe('plain');
});
