import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { publicPackages, repositoryRoot } from '../src/workspace.js';

const rootManifest = JSON.parse(readFileSync(join(repositoryRoot, 'package.json'), 'utf8')) as {
  engines: { node: string };
};
const catalogTfjsCore = /^\s+"@tensorflow\/tfjs-core":\s*(\S+)\s*$/m.exec(
  readFileSync(join(repositoryRoot, 'pnpm-workspace.yaml'), 'utf8'),
)?.[1];

describe.each(publicPackages().map((entry) => [entry.manifest.name, entry] as const))('%s package.json', (_name, entry) => {
  const { manifest, directory } = entry;

  it('ships the MIT LICENSE and says where the code, docs and issue tracker are', () => {
    expect(manifest.license).toBe('MIT');
    expect(readFileSync(join(repositoryRoot, directory, 'LICENSE'), 'utf8')).toBe(
      readFileSync(join(repositoryRoot, 'LICENSE'), 'utf8'),
    );
    expect(manifest.files).toContain('LICENSE');
    expect(manifest.repository).toMatchObject({ type: 'git', directory });
    expect(manifest.homepage).toMatch(new RegExp(`/${directory}#readme$`));
    expect(manifest.bugs).toMatchObject({ url: expect.stringMatching(/^https:\/\//) });
    expect(manifest.engines?.['node']).toBe(rootManifest.engines.node);
    expect(manifest.publishConfig?.access).toBe('public');
  });

  it('declares tfjs-core as a peer at the exact version its pinned backends accept, and never all of @tensorflow/tfjs', () => {
    expect(catalogTfjsCore).toBeDefined();
    const peers = manifest.peerDependencies ?? {};
    // Every library with code takes tfjs-core as a peer; a data-only package (@lora/base-moby) has no code.
    if (directory.startsWith('packages/') && manifest.exports?.['.'] !== undefined) {
      expect(peers['@tensorflow/tfjs-core']).toBe(catalogTfjsCore);
    }
    expect(peers['@tensorflow/tfjs']).toBeUndefined();
    expect(manifest.dependencies?.['@tensorflow/tfjs']).toBeUndefined();
  });

  it('gives every optional peer a range in peerDependencies (npm ignores one listed only in peerDependenciesMeta)', () => {
    for (const [name, meta] of Object.entries(manifest.peerDependenciesMeta ?? {})) {
      expect(manifest.peerDependencies?.[name], name).toMatch(/\d/);
      expect(meta.optional, name).toBe(true);
    }
  });

  it('takes zod with a caret range, so an app shares one zod with the types in .d.ts files', () => {
    const zod = manifest.dependencies?.['zod'];
    if (zod !== undefined) expect(zod).toMatch(/^\^3\./);
  });

  it('has a README', () => {
    expect(existsSync(join(repositoryRoot, directory, 'README.md'))).toBe(true);
  });
});
