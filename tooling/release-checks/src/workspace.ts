// The workspace as the release tools see it: every package directory named by
// pnpm-workspace.yaml, with its package.json. Read from disk so a package added by
// another branch (e.g. @lora/hyper) is checked without editing these gates.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (two levels above this package). */
export const repositoryRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** The fields of package.json that the release gates read. */
export interface PackageManifest {
  name: string;
  version: string;
  private?: boolean;
  license?: string;
  files?: string[];
  bin?: Record<string, string> | string;
  engines?: Record<string, string>;
  repository?: { type: string; url: string; directory?: string } | string;
  homepage?: string;
  bugs?: { url: string } | string;
  exports?: Record<string, unknown>;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
  devDependencies?: Record<string, string>;
  publishConfig?: { access?: string };
}

/** One workspace package: its directory relative to the root and its manifest. */
export interface WorkspacePackage {
  directory: string;
  manifest: PackageManifest;
}

/** Every package of the workspace, in pnpm-workspace.yaml order. */
export function workspacePackages(root: string = repositoryRoot): WorkspacePackage[] {
  const yaml = readFileSync(join(root, 'pnpm-workspace.yaml'), 'utf8');
  const patterns: string[] = [];
  // Only the `packages:` list is read; the catalog that follows is not a package list.
  let inPackages = false;
  for (const line of yaml.split('\n')) {
    if (/^packages:\s*$/.test(line)) inPackages = true;
    else if (/^\S/.test(line)) inPackages = false;
    else if (inPackages) {
      const match = /^\s+-\s+['"]?([^'"\s]+)['"]?\s*$/.exec(line);
      if (match?.[1]) patterns.push(match[1]);
    }
  }
  const directories = patterns.flatMap((pattern) => {
    if (!pattern.endsWith('/*')) return [pattern];
    const parent = pattern.slice(0, -2);
    return readdirSync(join(root, parent), { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => `${parent}/${entry.name}`)
      .sort();
  });
  return directories
    .filter((directory) => existsSync(join(root, directory, 'package.json')))
    .map((directory) => ({
      directory,
      manifest: JSON.parse(readFileSync(join(root, directory, 'package.json'), 'utf8')) as PackageManifest,
    }));
}

/** The packages that `changeset publish` would publish (not private). */
export function publicPackages(root: string = repositoryRoot): WorkspacePackage[] {
  return workspacePackages(root).filter((entry) => entry.manifest.private !== true);
}
