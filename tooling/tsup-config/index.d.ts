import type { Options } from 'tsup';
export declare function defineLibraryConfig(options?: {
  entry?: Record<string, string>;
  external?: string[];
  noExternal?: (string | RegExp)[];
  /** Name prefixes of output chunks (bundled third-party code) to minify after the build. */
  minifyChunks?: string[];
}): Options | Options[];
