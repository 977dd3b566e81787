import type { UserConfig } from 'vitest/config';
export declare function defineTestConfig(options?: { testTimeout?: number }): UserConfig;
