import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { detectPackageManager, installCommand } from '../src/package-manager.js';

describe('installCommand', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'selector-pm-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  async function project(name: string, files: Record<string, string>): Promise<string> {
    const directory = path.join(root, name);
    await mkdir(directory, { recursive: true });
    for (const [file, text] of Object.entries(files)) await writeFile(path.join(directory, file), text);
    return directory;
  }

  it('uses the lockfile\'s package manager, with -w at a pnpm workspace root (pnpm refuses plain add there)', async () => {
    const noAgent = {};
    const pnpmRoot = await project('pnpm-root', { 'package.json': '{}', 'pnpm-lock.yaml': '', 'pnpm-workspace.yaml': 'packages: []\n' });
    expect(installCommand(['@lora/quant'], detectPackageManager(pnpmRoot, noAgent))).toBe('pnpm add -w @lora/quant');
    const pnpmPackage = await project('pnpm-root/packages/app', { 'package.json': '{}' });
    expect(installCommand(['@lora/quant'], detectPackageManager(pnpmPackage, noAgent))).toBe('pnpm add @lora/quant');
    const yarn = await project('yarn', { 'package.json': '{}', 'yarn.lock': '' });
    expect(installCommand(['@lora/dora'], detectPackageManager(yarn, noAgent))).toBe('yarn add @lora/dora');
    const npm = await project('npm', { 'package.json': '{}', 'package-lock.json': '{}' });
    expect(installCommand(['@lora/dora'], detectPackageManager(npm, noAgent))).toBe('npm install @lora/dora');
    // The running package manager wins over a lockfile.
    expect(installCommand(['@lora/dora'], detectPackageManager(npm, { npm_config_user_agent: 'pnpm/9.15.9 npm/? node/v20' }))).toBe('pnpm add @lora/dora');
  });

  it('names no command for a package that is not published, and one for every recipe package', () => {
    expect(installCommand(['@lora/not-a-package'], { name: 'pnpm', source: 'test', workspaceRoot: false })).toBeNull();
    expect(installCommand(['@lora/hyper'], { name: 'pnpm', source: 'test', workspaceRoot: false })).toBe('pnpm add @lora/hyper');
  });
});
