import type { Options } from 'tsup';
export declare function defineLibraryConfig(options?: {
  entry?: Record<string, string>;
  external?: string[];
  noExternal?: (string | RegExp)[];
}): Options | Options[];
