import { defineLibraryConfig } from '@lora-internal/tsup-config';

export default defineLibraryConfig({
  entry: { index: 'src/index.ts', internal: 'src/internal.ts', testing: 'src/testing.ts' },
  external: ['vitest'],
  // tfjs-core ships its gradient registrations only as unbundled ESM with extensionless
  // imports, which Node cannot load; bundling them keeps `@tensorflow/tfjs` (layers, converter,
  // data, webgl) out of installs. tfjs-core keeps its engine and registries on globalThis, so the
  // bundled registrations land in the one registry the user's tfjs-core reads.
  noExternal: [/^@tensorflow\/tfjs-core\/dist\//],
});
