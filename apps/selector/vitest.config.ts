import { defineTestConfig } from '@lora-internal/vitest-config';

export default defineTestConfig({ testTimeout: 300_000 });
