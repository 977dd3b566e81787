import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { recipePackages } from './recipe.js';

/**
 * The @lora packages an install hint may name: core, models and the backend, plus the packages the
 * flowchart's recipes name (the only table of variant packages). Any other name gets no command.
 */
export const PUBLISHED_PACKAGES: ReadonlySet<string> = new Set(['@lora/core', '@lora/models', '@lora/cuda-backend', ...recipePackages()]);

/** A package manager and whether the command runs at a workspace root. */
export interface PackageManager {
  readonly name: 'npm' | 'pnpm' | 'yarn' | 'bun';
  /** Why this one: the user agent of the running package manager, or the lockfile found. */
  readonly source: string;
  /** The nearest package.json is a workspace root (pnpm and yarn then need `-w` / `-W`). */
  readonly workspaceRoot: boolean;
}

const LOCKFILES: readonly [string, PackageManager['name']][] = [
  ['pnpm-lock.yaml', 'pnpm'],
  ['yarn.lock', 'yarn'],
  ['bun.lockb', 'bun'],
  ['bun.lock', 'bun'],
  ['package-lock.json', 'npm'],
  ['npm-shrinkwrap.json', 'npm'],
];

/**
 * Which package manager the user runs: the one that started this process (`npm_config_user_agent`,
 * set by `pnpm lora …`, `npx`, `yarn`), else the lockfile nearest to `cwd`, else npm.
 */
export function detectPackageManager(cwd: string = process.cwd(), env: NodeJS.ProcessEnv = process.env): PackageManager {
  let name: PackageManager['name'] | null = null;
  let source = '';
  const agent = /^(npm|pnpm|yarn|bun)\//u.exec(env['npm_config_user_agent'] ?? '');
  if (agent) {
    name = agent[1] as PackageManager['name'];
    source = `npm_config_user_agent ${agent[0]}`;
  }
  let projectRoot: string | null = null;
  for (let directory = path.resolve(cwd); ; directory = path.dirname(directory)) {
    if (projectRoot === null && existsSync(path.join(directory, 'package.json'))) projectRoot = directory;
    if (name === null) {
      const found = LOCKFILES.find(([file]) => existsSync(path.join(directory, file)));
      if (found) {
        name = found[1];
        source = path.join(directory, found[0]);
      }
    }
    if ((name !== null && projectRoot !== null) || path.dirname(directory) === directory) break;
  }
  name ??= 'npm';
  const workspaceRoot =
    projectRoot !== null && (name === 'pnpm' ? existsSync(path.join(projectRoot, 'pnpm-workspace.yaml')) : name === 'yarn' && hasWorkspaces(projectRoot));
  return { name, source: source || 'default', workspaceRoot };
}

function hasWorkspaces(directory: string): boolean {
  try {
    const json = JSON.parse(readFileSync(path.join(directory, 'package.json'), 'utf8')) as { workspaces?: unknown };
    return json.workspaces !== undefined;
  } catch {
    return false;
  }
}

/**
 * The command that makes `packages` importable by this CLI, or null when one of them is not
 * published (no command would work). Run through `npx` (npm's `_npx` cache) a package is only found
 * beside the CLI, so the extra packages are named to npx with the same arguments; otherwise the
 * user's package manager adds them to the project (`-w` / `-W` at a workspace root).
 *
 * @param options.location path of the running CLI (default: this module's file), `options.argv` its
 *   arguments (default `process.argv.slice(2)`): parameters for tests.
 * @example installCommand(['@lora/quant']) // 'pnpm add -w @lora/quant' at a pnpm workspace root
 */
export function installCommand(
  packages: readonly string[],
  manager: PackageManager = detectPackageManager(),
  options: { readonly location?: string; readonly argv?: readonly string[] } = {},
): string | null {
  if (packages.length === 0 || packages.some((name) => !PUBLISHED_PACKAGES.has(name))) return null;
  const location = (options.location ?? fileURLToPath(import.meta.url)).replaceAll('\\', '/');
  if (location.includes('/_npx/')) {
    const extra = packages.map((name) => `-p ${name}`).join(' ');
    return `npx -p @lora/selector ${extra} lora ${(options.argv ?? process.argv.slice(2)).join(' ')}`.trimEnd();
  }
  const list = packages.join(' ');
  switch (manager.name) {
    case 'pnpm':
      return `pnpm add${manager.workspaceRoot ? ' -w' : ''} ${list}`;
    case 'yarn':
      return `yarn add${manager.workspaceRoot ? ' -W' : ''} ${list}`;
    case 'bun':
      return `bun add ${list}`;
    default:
      return `npm install ${list}`;
  }
}
