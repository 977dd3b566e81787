// The API reference (`pnpm run docs`, TypeDoc's packages strategy over typedoc.json) covers every
// published package with code and fails on an undocumented export: the workspace converts with no
// warning (warnings are errors there), and a fixture package with an undocumented export (and an
// undocumented property of a documented interface) fails under the same configuration.
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runChecked } from '../src/install-check.js';
import { publicPackages, repositoryRoot } from '../src/workspace.js';

const typedoc = join(dirname(createRequire(import.meta.url).resolve('typedoc/package.json')), 'bin/typedoc');
const configuration = JSON.parse(readFileSync(join(repositoryRoot, 'typedoc.json'), 'utf8')) as {
  entryPointStrategy: string;
  entryPoints: string[];
  treatWarningsAsErrors: boolean;
  packageOptions: { validation: { notDocumented: boolean }; requiredToBeDocumented: string[] };
};

/** Run TypeDoc from the repository root without writing the site; resolves with its exit code and output. */
async function runTypedoc(...args: string[]): Promise<{ code: number; output: string }> {
  try {
    const output = await runChecked(process.execPath, [typedoc, '--emit', 'none', ...args], { cwd: repositoryRoot });
    return { code: 0, output };
  } catch (error) {
    const message = (error as Error).message;
    const code = /exited (\d+)/.exec(message)?.[1];
    return { code: Number(code ?? -1), output: message };
  }
}

describe('typedoc.json', () => {
  it('lists every published package that has TypeScript sources, with undocumented exports as errors', () => {
    const withSources = publicPackages()
      .filter((entry) => existsSync(join(repositoryRoot, entry.directory, 'src/index.ts')))
      .map((entry) => entry.directory);
    expect(configuration.entryPointStrategy).toBe('packages');
    expect([...configuration.entryPoints].sort()).toEqual(withSources.sort());
    expect(configuration.packageOptions.validation.notDocumented).toBe(true);
    // Properties too: an options interface's fields are most of what a user reads in the reference.
    expect(configuration.packageOptions.requiredToBeDocumented).toEqual(
      expect.arrayContaining(['Function', 'Class', 'Interface', 'TypeAlias', 'Variable', 'Method', 'Accessor', 'Property']),
    );
    expect(configuration.treatWarningsAsErrors).toBe(true);
  });
});

describe('the API reference', () => {
  it('converts every package with no warning', async () => {
    const { code, output } = await runTypedoc();
    expect(output, 'typedoc output').not.toMatch(/\[warning\]|\[error\]/);
    expect(code, output).toBe(0);
    for (const directory of configuration.entryPoints) expect(output).toContain(`Converting project at ./${directory}`);
  }, 300_000);

  it('fails on a package with an undocumented export, naming it', async () => {
    const fixture = fileURLToPath(new URL('fixtures/undocumented-export', import.meta.url));
    const { code, output } = await runTypedoc('--entryPoints', fixture);
    expect(output).toMatch(/undocumentedTimesTwo \(CallSignature\).* does not have any documentation/);
    expect(output).toMatch(/PartlyDocumentedOptions\.undocumentedLimit \(Property\).* does not have any documentation/);
    expect(output).not.toMatch(/documentedPlusOne|\.documentedLimit \(/);
    expect(code).not.toBe(0);
  }, 120_000);
});
