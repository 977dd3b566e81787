import { defineLibraryConfig } from '@lora-internal/tsup-config';

export default defineLibraryConfig({
  // `index` and `internal` bundle for a browser; their `.node` twins (the `node` export condition)
  // add the node:fs file host behind the path-based APIs and the worker_threads thread host. `testing` is Node-only (vitest).
  entry: {
    index: 'src/index.ts',
    'index.node': 'src/index.node.ts',
    internal: 'src/internal.ts',
    'internal.node': 'src/internal.node.ts',
    testing: 'src/testing.ts',
  },
  external: ['vitest'],
  // tfjs-core ships its gradient registrations only as unbundled ESM with extensionless
  // imports, which Node cannot load; bundling them keeps `@tensorflow/tfjs` (layers, converter,
  // data, webgl) out of installs. tfjs-core keeps its engine and registries on globalThis, so the
  // bundled registrations land in the one registry the user's tfjs-core reads.
  noExternal: [/^@tensorflow\/tfjs-core\/dist\//],
  // Those registrations are ~300 kB of tfjs-core's code in each of the ESM and CJS builds, a quarter
  // of the tarball; nobody reads them in a stack trace, so their chunk is minified.
  minifyChunks: ['register-gradients'],
});
