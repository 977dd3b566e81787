import { defineLibraryConfig } from '@lora-internal/tsup-config';

// `index` bundles for a browser (WebGPU/WebGL/WASM); `index.node` (the `node` export condition) is
// the Node surface: tfjs-node(-gpu), threaded WASM in Node, doctor.
export default defineLibraryConfig({ entry: { index: 'src/index.ts', 'index.node': 'src/index.node.ts' } });
