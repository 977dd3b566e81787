import * as tf from '@tensorflow/tfjs-core';
import { describe, expect, it } from 'vitest';
import { useBestBackend } from '../src/index.node.js';

// Runs only where a CUDA machine with @tensorflow/tfjs-node-gpu installed says so:
// `LORA_TEST_GPU=1 pnpm --filter @lora/cuda-backend test`. Everywhere else the GPU path is covered
// by the simulated packages in use-best-backend.test.ts.
describe.runIf(process.env['LORA_TEST_GPU'] === '1')('useBestBackend on a CUDA machine', () => {
  it('selects tfjs-node-gpu on the GPU and computes on it', async () => {
    const report = await useBestBackend({ prefer: 'cuda', fallback: false });
    expect(report).toMatchObject({ kind: 'cuda', backend: 'tensorflow', gpu: true });
    const a = tf.randomNormal([512, 512], 0, 1, 'float32', 1);
    const product = tf.matMul(a, a, false, true);
    const diagonal = await tf.sum(tf.mul(a, a), 1).data();
    const values = await product.data();
    for (let i = 0; i < 512; i += 97) expect(values[i * 512 + i]).toBeCloseTo(diagonal[i]!, 2);
    tf.dispose([a, product]);
  });
});
