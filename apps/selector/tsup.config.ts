import { defineConfig } from 'tsup';

// An application: ESM only, with a shebang on the CLI entry.
export default defineConfig({
  entry: { index: 'src/index.ts', cli: 'src/cli.ts' },
  format: ['esm'],
  dts: { entry: { index: 'src/index.ts' } },
  sourcemap: false,
  clean: true,
  target: 'node20',
  banner: ({ format }) => (format === 'esm' ? {} : {}),
});
