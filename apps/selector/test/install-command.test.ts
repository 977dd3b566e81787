import { describe, expect, it } from 'vitest';
import { installCommandFor } from '../src/install-command.js';

describe('installCommandFor', () => {
  it('names the packages to npx, with the same arguments, when the CLI runs from npx', () => {
    expect(
      installCommandFor(['@lora/dora'], '/home/u/.npm/_npx/1a2b/node_modules/@lora/selector/dist/cli.js', ['train', '--expressive']),
    ).toBe('npx -p @lora/selector -p @lora/dora lora train --expressive');
  });

  it('says npm install when npm installed the CLI, and pnpm add when pnpm did', () => {
    expect(installCommandFor(['@lora/quant', '@lora/dora'], '/app/node_modules/@lora/selector/dist/cli.js', [])).toBe(
      'npm install @lora/quant @lora/dora',
    );
    expect(
      installCommandFor(['@lora/quant'], '/app/node_modules/.pnpm/@lora+selector@0.2.0/node_modules/@lora/selector/dist/cli.js', []),
    ).toBe('pnpm add @lora/quant');
  });

  it('says pnpm add inside this repository (not installed from a registry)', () => {
    expect(installCommandFor(['@lora/adalora'], '/work/lora/apps/selector/dist/cli.js', [])).toBe('pnpm add @lora/adalora');
  });
});
