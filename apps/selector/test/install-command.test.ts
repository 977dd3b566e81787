import { describe, expect, it } from 'vitest';
import { installCommand, type PackageManager } from '../src/package-manager.js';

const npm: PackageManager = { name: 'npm', source: 'test', workspaceRoot: false };
const pnpm: PackageManager = { name: 'pnpm', source: 'test', workspaceRoot: false };

describe('installCommand and where the CLI runs from', () => {
  it('names the packages to npx, with the same arguments, when the CLI runs from npx', () => {
    expect(
      installCommand(['@lora/dora'], npm, { location: '/home/u/.npm/_npx/1a2b/node_modules/@lora/selector/dist/cli.js', argv: ['train', '--expressive'] }),
    ).toBe('npx -p @lora/selector -p @lora/dora lora train --expressive');
  });

  it("uses the project's package manager when the CLI is installed in it", () => {
    const location = '/app/node_modules/@lora/selector/dist/cli.js';
    expect(installCommand(['@lora/quant', '@lora/dora'], npm, { location, argv: [] })).toBe('npm install @lora/quant @lora/dora');
    expect(installCommand(['@lora/quant'], pnpm, { location, argv: [] })).toBe('pnpm add @lora/quant');
  });
});
