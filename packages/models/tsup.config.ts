import { defineLibraryConfig } from '@lora-internal/tsup-config';
import type { Options } from 'tsup';

const base = defineLibraryConfig({ entry: { index: 'src/index.ts' } }) as Options;

// `shims` gives the CJS build an `import.meta.url`, which locates the bundled base model's assets.
export default { ...base, shims: true } satisfies Options;
