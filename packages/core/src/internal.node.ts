// @lora/core/internal in Node (the `node` export condition): installs the node:fs file host too,
// so a package that imports only internal helpers still gets working paths.
import { installNodeFileHost } from './node-file-host.js';

installNodeFileHost();

export * from './internal.js';
