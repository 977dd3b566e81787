import { defineTestConfig } from '@lora-internal/vitest-config';

export default defineTestConfig();
