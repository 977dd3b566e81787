// Shared vitest settings. Numerical tests are CPU-heavy on 2 cores, so files run in
// forked processes (tfjs's WASM backend is per process) with generous timeouts.
import { defineConfig } from 'vitest/config';

/** @param {{ testTimeout?: number }} [options] */
export function defineTestConfig(options = {}) {
  return defineConfig({
    test: {
      include: ['test/**/*.test.ts'],
      pool: 'forks',
      poolOptions: { forks: { maxForks: 2, minForks: 1 } },
      testTimeout: options.testTimeout ?? 120_000,
      hookTimeout: 120_000,
      reporters: ['default'],
    },
  });
}
