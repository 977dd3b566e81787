// The rate each product is compared with: a 1024² float32 matMul in the same process.
import { tf } from './packages.mjs';

/**
 * Best-of-5 GFLOP/s of a 1024² matMul (after one discarded product) on the active backend. Timed as
 * a training step's products are, without reading the result back: the backends profiled here
 * (WASM, tfjs-node, plain JS) compute synchronously, and a read-back of the 4 MB result took a third
 * of the time (seen: 46.6 GFLOP/s with it, 66.6 without).
 */
export function referenceGflops() {
  const size = 1024;
  const [a, b] = [tf.randomNormal([size, size], 0, 1, 'float32', 1), tf.randomNormal([size, size], 0, 1, 'float32', 2)];
  let best = Number.POSITIVE_INFINITY;
  for (let rep = 0; rep < 6; rep++) {
    const started = performance.now();
    const product = tf.matMul(a, b);
    if (rep > 0) best = Math.min(best, performance.now() - started);
    product.dispose();
  }
  tf.dispose([a, b]);
  return (2 * size ** 3) / best / 1e6;
}
