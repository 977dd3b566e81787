// Shared tsup settings: every library ships ESM + CJS with its own declaration files.
import { defineConfig } from 'tsup';

/**
 * @param {{ entry?: Record<string, string>, external?: string[], noExternal?: (string | RegExp)[] }} [options]
 */
export function defineLibraryConfig(options = {}) {
  return defineConfig({
    entry: options.entry ?? { index: 'src/index.ts' },
    format: ['esm', 'cjs'],
    dts: true,
    // No source maps: with the TypeScript sources embedded they were 54–61% of each tarball,
    // and without them they point at files a tarball does not have. The unminified ESM/CJS
    // output is readable in a stack trace as it is.
    sourcemap: false,
    clean: true,
    target: 'node20',
    splitting: true,
    treeshake: true,
    external: options.external ?? [],
    noExternal: options.noExternal ?? [],
  });
}
