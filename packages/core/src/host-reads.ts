import * as tf from '@tensorflow/tfjs-core';

// Backends whose reads are synchronous copies from memory the process already holds: the plain-JS
// and WASM backends, and tfjs-node's native one. On a GPU backend (webgl, webgpu) a synchronous read
// stalls until all queued GPU work is done, every time; tfjs's webgpu backend even reads through a
// canvas (on headless Chromium's WebGPU on SwiftShader, one such read breaks every later
// asynchronous read). Checks that only guard against bad input therefore read values on these
// backends only.
const HOST_MEMORY_BACKENDS = new Set(['cpu', 'wasm', 'tensorflow']);

/**
 * Whether the active backend's tensors can be read synchronously at the cost of a copy (cpu, wasm,
 * tensorflow): the gate of input checks that read a tensor's values (labels, token ids), which GPU
 * backends skip.
 */
export function hostReadIsCheap(): boolean {
  return HOST_MEMORY_BACKENDS.has(tf.getBackend());
}
