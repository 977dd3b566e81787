// Shared tsup settings: every library ships ESM + CJS with its own declaration files.
import { defineConfig } from 'tsup';

/**
 * @param {{ entry?: Record<string, string>, external?: string[] }} [options]
 */
export function defineLibraryConfig(options = {}) {
  return defineConfig({
    entry: options.entry ?? { index: 'src/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    sourcemap: true,
    clean: true,
    target: 'node20',
    splitting: true,
    treeshake: true,
    external: options.external ?? [],
  });
}
