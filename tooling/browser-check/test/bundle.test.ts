import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bundleForBrowser } from '../src/bundle.js';

const PAGE_ENTRY = fileURLToPath(new URL('../src/page.ts', import.meta.url));
const EVERY_PACKAGE_FIXTURE = fileURLToPath(new URL('./fixtures/every-package.ts', import.meta.url));
const NODE_FS_FIXTURE = fileURLToPath(new URL('./fixtures/imports-node-fs.ts', import.meta.url));

describe('bundleForBrowser', () => {
  it('bundles @lora/core, models, dora, quant and cuda-backend for the browser with no Node built-in', async () => {
    const bundle = await bundleForBrowser(PAGE_ENTRY);
    expect(bundle.errors).toEqual([]);
    expect(bundle.nodeBuiltins).toEqual([]);
    expect(bundle.code).not.toBeNull();
    // Each package's browser build (dist/index.js, not the dist/index.node.* of Node's condition) is in.
    for (const name of ['core', 'models', 'dora', 'quant', 'cuda-backend']) {
      const inputs = bundle.inputs.filter((input) => input.includes(`packages/${name}/dist/`));
      expect(inputs, name).toContainEqual(expect.stringMatching(new RegExp(`packages/${name}/dist/index\\.js$`, 'u')));
      expect(inputs.filter((input) => input.includes('.node.')), name).toEqual([]);
    }
  });

  it('bundles the main entry of every @lora package (all variants) with no Node built-in', async () => {
    const bundle = await bundleForBrowser(EVERY_PACKAGE_FIXTURE);
    expect(bundle.errors).toEqual([]);
    expect(bundle.nodeBuiltins).toEqual([]);
    for (const name of ['adalora', 'core', 'cuda-backend', 'dora', 'hyper', 'models', 'quant']) {
      expect(bundle.inputs, name).toContainEqual(expect.stringMatching(new RegExp(`packages/${name}/dist/index\\.js$`, 'u')));
    }
  });

  it('names node:fs and the file importing it when a browser entry reaches it', async () => {
    const bundle = await bundleForBrowser(NODE_FS_FIXTURE);
    expect(bundle.code).toBeNull();
    expect(bundle.nodeBuiltins).toEqual([{ specifier: 'node:fs', importer: expect.stringMatching(/imports-node-fs\.ts$/u) }]);
  });
});
