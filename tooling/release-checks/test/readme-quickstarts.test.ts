// Every published package's README opens with a JavaScript quickstart that runs as written, and its
// examples ship in the tarball and run from where npm installs them: the packed tarballs are
// installed together with plain npm outside the workspace, each marked README block is run with node
// in its own folder there, and each example is run by the path the README gives.
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { npmInstall, packPublicPackages, runChecked, runNodeScript, scratchDirectory, type PackedPackage } from '../src/install-check.js';
import { extractQuickstarts, fenceLanguages, packageExamples, tfjsCoreSpec } from '../src/readme-quickstarts.js';
import { publicPackages, repositoryRoot } from '../src/workspace.js';

/** How many quickstart blocks each README holds: a block that loses its marker fails here. */
const EXPECTED_QUICKSTARTS: Record<string, number> = {
  '@lora/core': 1,
  '@lora/models': 1,
  '@lora/base-moby': 1,
  '@lora/dora': 1,
  '@lora/quant': 1,
  '@lora/adalora': 1,
  '@lora/hyper': 1,
  '@lora/cuda-backend': 1,
  '@lora/selector': 1,
};

/** The example scripts each package ships (base-moby is data only). */
const EXPECTED_EXAMPLES: Record<string, string[]> = {
  '@lora/core': ['quickstart.mjs'],
  '@lora/models': ['quickstart.mjs'],
  '@lora/base-moby': [],
  '@lora/dora': ['quickstart.mjs'],
  '@lora/quant': ['quickstart.mjs'],
  '@lora/adalora': ['quickstart.mjs'],
  '@lora/hyper': ['quickstart.mjs'],
  '@lora/cuda-backend': ['quickstart.mjs'],
  '@lora/selector': [],
};

const packages = publicPackages().map((entry) => {
  const file = join(entry.directory, 'README.md');
  const readme = readFileSync(join(repositoryRoot, file), 'utf8');
  return { entry, name: entry.manifest.name, file, readme, quickstarts: extractQuickstarts(readme, file), examples: packageExamples(entry, repositoryRoot) };
});

describe('extractQuickstarts', () => {
  it('returns only the js blocks after a quickstart marker, with the line of their fence', () => {
    const markdown = [
      '# x', // 1
      '```js', // 2: not marked
      'fragment();',
      '```',
      '<!-- quickstart -->', // 5
      '',
      '```js', // 7
      "console.log('a');",
      '```',
      '```sh', // 10: not marked
      'npm install',
      '```',
      '<!-- quickstart: second -->', // 13
      '````js', // 14: a longer fence holds a shorter one
      "console.log('b');",
      '```',
      '````',
    ].join('\n');
    expect(extractQuickstarts(markdown, 'x.md')).toEqual([
      { line: 7, code: "console.log('a');\n" },
      { line: 14, code: "console.log('b');\n```\n" },
    ]);
    expect(fenceLanguages(markdown)).toEqual(['js', 'js', 'sh', 'js']);
  });

  it('refuses an unclosed block', () => {
    expect(() => extractQuickstarts('<!-- quickstart -->\n```js\nconsole.log(1);\n', 'x.md')).toThrow(/x\.md:2: the quickstart block is not closed/);
  });

  it('refuses a marker that is not followed by a js block', () => {
    expect(() => extractQuickstarts('<!-- quickstart -->\n```ts\nconst a: number = 1;\n```\n', 'y.md')).toThrow(
      /y\.md:1: a quickstart marker must be followed by a ```js block, found "```ts"/,
    );
  });
});

describe('package READMEs', () => {
  it('cover every public package in the expected tables', () => {
    expect(packages.map((entry) => entry.name).sort()).toEqual(Object.keys(EXPECTED_QUICKSTARTS).sort());
    expect(Object.keys(EXPECTED_EXAMPLES).sort()).toEqual(Object.keys(EXPECTED_QUICKSTARTS).sort());
  });

  it.each(packages.map((entry) => [entry.name, entry] as const))('%s has its runnable quickstarts and no TypeScript blocks', (name, entry) => {
    expect(entry.quickstarts.length, `${entry.file} quickstart blocks`).toBe(EXPECTED_QUICKSTARTS[name]);
    expect(entry.quickstarts.length, `${entry.file} has a runnable quickstart`).toBeGreaterThan(0);
    // A user copies README code into a .mjs file; TypeScript syntax there is a SyntaxError.
    expect(fenceLanguages(entry.readme).filter((language) => language === 'ts' || language === 'typescript'), entry.file).toEqual([]);
  });

  it.each(packages.map((entry) => [entry.name, entry] as const))('%s ships its examples and names them by their installed path', (name, entry) => {
    expect(entry.examples, `${entry.entry.directory}/examples`).toEqual(EXPECTED_EXAMPLES[name]);
    if (entry.examples.length === 0) return;
    expect(entry.entry.manifest.files, `${name} package.json files`).toContain('examples');
    for (const example of entry.examples) expect(entry.readme, entry.file).toContain(`node node_modules/${name}/examples/${example}`);
    // Repository paths only work in a clone; the README is read on npm.
    expect(entry.readme, entry.file).not.toMatch(/node (packages|apps)\/[\w-]+\/examples\//);
  });
});

describe('quickstarts and examples, from the packed tarballs installed with npm', () => {
  let root: string;
  let packed: Map<string, PackedPackage>;

  beforeAll(async () => {
    root = scratchDirectory('lora-readme-quickstarts-');
    packed = await packPublicPackages(root);
    await npmInstall(join(root, 'app'), [...[...packed.values()].map((entry) => entry.tarball), tfjsCoreSpec()]);
  }, 600_000);

  afterAll(() => {
    if (root) rmSync(root, { recursive: true, force: true });
  });

  const quickstarts = packages.flatMap((entry) => entry.quickstarts.map((block, index) => ({ name: entry.name, file: entry.file, block, index })));
  it.each(quickstarts.map((quickstart) => [`${quickstart.file}:${quickstart.block.line}`, quickstart] as const))(
    '%s runs with node',
    async (_label, { name, block, index }) => {
      // Its own folder, so files a block writes (./my-adapter) do not meet another block's.
      const folder = join(root, 'app', `${name.replace(/[@/]/g, '_')}-${index}`);
      mkdirSync(folder, { recursive: true });
      const output = await runNodeScript(folder, 'quickstart.mjs', block.code);
      expect(output.trim().length, 'the quickstart prints what it did').toBeGreaterThan(0);
    },
    180_000,
  );

  const examples = packages.flatMap((entry) => entry.examples.map((example) => `node_modules/${entry.name}/examples/${example}`));
  it.each(examples)('node %s runs', async (path) => {
    const name = path.split('/').slice(1, 3).join('/');
    const listing = await runChecked('tar', ['-tzf', packed.get(name)!.tarball], { cwd: root });
    expect(listing.split('\n'), `${name} tarball`).toContain(`package/${path.split('/').slice(3).join('/')}`);
    const output = await runChecked(process.execPath, [path], { cwd: join(root, 'app') });
    expect(output.trim().length, 'the example prints what it did').toBeGreaterThan(0);
  }, 180_000);
});
