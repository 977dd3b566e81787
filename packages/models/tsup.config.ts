import { defineLibraryConfig } from '@lora-internal/tsup-config';
import type { Options } from 'tsup';

const base = defineLibraryConfig({ entry: { index: 'src/index.ts' } }) as Options;

// `shims` gives the CJS build an `import.meta.url`, from which the bundled base model's package is resolved.
export default { ...base, shims: true } satisfies Options;
