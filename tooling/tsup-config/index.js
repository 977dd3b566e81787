// Shared tsup settings: every library ships ESM + CJS with its own declaration files.
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { defineConfig } from 'tsup';

/**
 * Minify, in place, the output files in `outDir` whose names start with one of `prefixes` (chunks
 * of bundled third-party code: only their size matters, nobody reads them in a stack trace; our
 * own output stays unminified, see `sourcemap` below). Legal comments stay, gathered at the end.
 * @param {string} outDir
 * @param {string[]} prefixes
 */
async function minifyOutputChunks(outDir, prefixes) {
  const { transform } = await import('esbuild');
  const names = (await readdir(outDir)).filter((name) => /\.c?js$/.test(name) && prefixes.some((prefix) => name.startsWith(`${prefix}-`)));
  if (names.length === 0) throw new Error(`minifyChunks: no output file in ${outDir} starts with ${prefixes.join(', ')}; was the chunk renamed?`);
  for (const name of names) {
    const path = join(outDir, name);
    const minified = await transform(await readFile(path, 'utf8'), {
      loader: 'js',
      format: name.endsWith('.cjs') ? 'cjs' : 'esm',
      minify: true,
      legalComments: 'eof',
      target: 'node20',
      sourcefile: name,
    });
    await writeFile(`${path}.tmp`, minified.code);
    await rename(`${path}.tmp`, path);
  }
}

/**
 * @param {{ entry?: Record<string, string>, external?: string[], noExternal?: (string | RegExp)[], minifyChunks?: string[] }} [options]
 *   `minifyChunks`: name prefixes of output chunks to minify after the build (see `minifyOutputChunks`).
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
    onSuccess: options.minifyChunks ? () => minifyOutputChunks('dist', options.minifyChunks) : undefined,
  });
}
