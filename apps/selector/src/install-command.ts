import { fileURLToPath } from 'node:url';

/**
 * The command that makes `packages` importable by this CLI, judged from where the CLI itself is
 * installed, because a package is only found beside it: run through `npx` (npm's `_npx` cache) the
 * extra packages must be named to npx; installed by npm or pnpm they are added to that project;
 * run from this repository's workspace it is `pnpm add`.
 *
 * @param packages npm package names, e.g. `['@lora/dora']`.
 * @param location path of the running CLI (default: this module's file); a parameter for tests.
 * @param argv the CLI's arguments, repeated in the npx form (default: `process.argv.slice(2)`).
 * @example
 * installCommandFor(['@lora/dora']); // 'npm install @lora/dora' when installed with npm
 */
export function installCommandFor(
  packages: readonly string[],
  location: string = fileURLToPath(import.meta.url),
  argv: readonly string[] = process.argv.slice(2),
): string {
  const normalized = location.replaceAll('\\', '/');
  const names = packages.join(' ');
  if (normalized.includes('/_npx/')) {
    const extra = packages.map((name) => `-p ${name}`).join(' ');
    return `npx -p @lora/selector ${extra} lora ${argv.join(' ')}`.trimEnd();
  }
  if (normalized.includes('/node_modules/.pnpm/')) return `pnpm add ${names}`;
  if (normalized.includes('/node_modules/')) return `npm install ${names}`;
  return `pnpm add ${names}`;
}
