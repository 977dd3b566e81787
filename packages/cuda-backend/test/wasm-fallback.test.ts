import * as tf from '@tensorflow/tfjs-core';
import type * as fs from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import { useBestBackend } from '../src/index.node.js';
import { nothingInstalled } from './helpers.js';

// A bundled or pruned install without tfjs-backend-wasm's wasm-out/ directory: the threaded build
// has no worker script to start, the single-threaded build (embedded in dist/) still works.
vi.mock('node:fs', async (importOriginal) => {
  const actual = await importOriginal<typeof fs>();
  return { ...actual, existsSync: (file: string) => !String(file).includes('wasm-out') && actual.existsSync(file) };
});

describe('useBestBackend', () => {
  it('falls back to single-threaded WASM when the threaded build cannot start, and says why', async () => {
    const report = await useBestBackend({ importModule: nothingInstalled, threads: 2 });
    expect(report).toMatchObject({ kind: 'wasm', backend: 'wasm', threads: 1, simd: true });
    const threaded = report.attempts.find((attempt) => attempt.kind === 'wasm-threads');
    expect(threaded).toMatchObject({ outcome: 'skipped', reason: 'init-failed' });
    expect(threaded!.message).toMatch(/tfjs-backend-wasm-threaded-simd\.worker\.js is missing.*Reinstall @tensorflow\/tfjs-backend-wasm/u);
    expect(Array.from(tf.tidy(() => tf.matMul(tf.ones([2, 3]), tf.ones([3, 2])).dataSync()))).toEqual([3, 3, 3, 3]);
  });
});
