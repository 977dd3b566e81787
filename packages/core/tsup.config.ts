import { defineLibraryConfig } from '@lora-internal/tsup-config';

export default defineLibraryConfig({
  entry: { index: 'src/index.ts', internal: 'src/internal.ts', testing: 'src/testing.ts' },
  external: ['vitest'],
});
