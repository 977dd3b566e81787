// @lora/core in Node (the `node` export condition): the same public surface as ./index.ts, with
// the path-based APIs (saveAdapter, loadAdapter(directory), train checkpoints, …) on node:fs.
import { installNodeFileHost } from './node-file-host.js';

installNodeFileHost();

export * from './index.js';
