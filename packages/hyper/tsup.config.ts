import { defineLibraryConfig } from '@lora-internal/tsup-config';

export default defineLibraryConfig({ entry: { index: 'src/index.ts' } });
