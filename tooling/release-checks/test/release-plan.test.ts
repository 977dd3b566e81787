import { describe, expect, it } from 'vitest';
import { planRelease, type PlannedRelease } from '../src/release-plan.js';
import { publicPackages, workspacePackages } from '../src/workspace.js';

const publicNames = publicPackages().map((entry) => entry.manifest.name).sort();
const privateNames = workspacePackages()
  .filter((entry) => entry.manifest.private === true)
  .map((entry) => entry.manifest.name);

function versioned(releases: PlannedRelease[]): Map<string, PlannedRelease> {
  return new Map(releases.filter((release) => release.type !== 'none').map((release) => [release.name, release]));
}

/** The next 0.x minor after `version` (0.1.0 → 0.2.0). */
function nextMinor(version: string): string {
  const [major, minor] = version.split('.').map(Number);
  return `${major}.${(minor ?? 0) + 1}.0`;
}

describe('changesets release plan', () => {
  it('plans every public @lora package at the next 0.x minor, and no private package, for the pending changesets', () => {
    const { releases, versioned: manifests } = planRelease();
    const planned = versioned(releases);
    expect([...planned.keys()].sort()).toEqual(publicNames);
    const currentVersion = publicPackages()[0]!.manifest.version;
    for (const release of planned.values()) {
      expect(release.type, release.name).toBe('minor');
      expect(release.newVersion, release.name).toBe(nextMinor(currentVersion));
      expect(release.newVersion.startsWith('0.'), release.name).toBe(true);
    }
    for (const name of privateNames) {
      expect(planned.has(name), `${name} is private`).toBe(false);
      expect(manifests.get(name)!.version, `${name} keeps its version`).toBe(
        workspacePackages().find((entry) => entry.manifest.name === name)!.manifest.version,
      );
    }
    // After `changeset version`, each internal range must accept the version published beside it.
    for (const name of publicNames) {
      const manifest = manifests.get(name)!;
      expect(manifest.version).toBe(nextMinor(currentVersion));
      for (const field of ['dependencies', 'peerDependencies'] as const) {
        for (const [dependency, range] of Object.entries(manifest[field] ?? {})) {
          if (!dependency.startsWith('@lora/')) continue;
          expect(range, `${name} ${field} ${dependency}`).toMatch(/^workspace:/);
          expect(satisfiesWorkspaceRange(nextMinor(currentVersion), range), `${name} ${field} ${dependency} ${range}`).toBe(true);
        }
      }
    }
  });

  it('plans a patch on one library as the same patch for the whole fixed group', () => {
    const { releases } = planRelease({ changesets: { sample: '---\n"@lora/dora": patch\n---\n\nA fix.\n' } });
    const planned = versioned(releases);
    expect([...planned.keys()].sort()).toEqual(publicNames);
    const versions = new Set([...planned.values()].map((release) => release.newVersion));
    expect(versions.size).toBe(1);
    expect([...versions][0]).toMatch(/^0\.\d+\.1$/);
  });

  it('plans a minor on core as a minor, not a major, for the packages that take core as a peer', () => {
    const { releases } = planRelease({ changesets: { sample: '---\n"@lora/core": minor\n---\n\nA feature.\n' } });
    const planned = versioned(releases);
    expect([...planned.keys()].sort()).toEqual(publicNames);
    for (const release of planned.values()) expect(release.type, release.name).toBe('minor');
  });

  it('would plan 1.0.0 with the old `workspace:^` peer on core (the check can fail)', () => {
    const { releases } = planRelease({
      changesets: { sample: '---\n"@lora/core": minor\n---\n\nA feature.\n' },
      editManifest: (manifest) => {
        if (manifest.peerDependencies?.['@lora/core']) manifest.peerDependencies['@lora/core'] = 'workspace:^';
      },
    });
    const majors = releases.filter((release) => release.type === 'major').map((release) => release.newVersion);
    expect(majors.length).toBeGreaterThan(0);
    expect(new Set(majors)).toEqual(new Set(['1.0.0']));
  });
});

/** `version` satisfies a `workspace:` range (the forms this repository uses). */
function satisfiesWorkspaceRange(version: string, range: string): boolean {
  const body = range.slice('workspace:'.length);
  if (body === '*' || body === '^' || body === '~') return true; // pnpm writes the exact version published beside it
  const parse = (text: string) => text.split('.').map(Number) as [number, number, number];
  const compare = (a: [number, number, number], b: [number, number, number]) =>
    a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
  const target = parse(version);
  return body.split(/\s+/).every((comparator) => {
    const match = /^(>=|<=|>|<|=)?(\d+\.\d+\.\d+)$/.exec(comparator);
    if (!match) throw new Error(`Unsupported range comparator "${comparator}" in ${range}`);
    const difference = compare(target, parse(match[2]!));
    switch (match[1]) {
      case '>=': return difference >= 0;
      case '<=': return difference <= 0;
      case '>': return difference > 0;
      case '<': return difference < 0;
      default: return difference === 0;
    }
  });
}
