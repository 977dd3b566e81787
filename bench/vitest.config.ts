import { defineTestConfig } from '@lora-internal/vitest-config';

// The acceptance test trains every method (3 seeds, tiny configuration) once, in `beforeAll`.
export default defineTestConfig({ testTimeout: 600_000 });
