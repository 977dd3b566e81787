import { defineTestConfig } from '@lora-internal/vitest-config';
import { mergeConfig } from 'vitest/config';

// Tests import ./src/index.ts (the browser-safe entry); install the node:fs file host that
// Node's entry (./src/index.node.ts) installs, so the path-based APIs work as they do for users.
export default mergeConfig(defineTestConfig(), { test: { setupFiles: ['./test/setup-node-host.ts'] } });
