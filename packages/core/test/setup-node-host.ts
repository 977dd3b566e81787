import { installNodeFileHost } from '../src/node-file-host.js';
import { installNodeThreadHost } from '../src/node-thread-host.js';
import { installNodeWasmFeatures } from '../src/node-wasm-features.js';

installNodeFileHost();
installNodeThreadHost();
installNodeWasmFeatures();
