// Runs changesets on a throw-away copy of the workspace's manifests, so a test can
// ask "what would the release publish?" for any set of changesets without touching
// the repository's .changeset/ folder or needing its git history.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { repositoryRoot, workspacePackages, type PackageManifest } from './workspace.js';

const changesetBin = createRequire(import.meta.url).resolve('@changesets/cli/bin.js');

/** One package in a changesets release plan (`changeset status --output`). */
export interface PlannedRelease {
  name: string;
  type: 'none' | 'patch' | 'minor' | 'major';
  oldVersion: string;
  newVersion: string;
}

/** What `planRelease` reports. */
export interface ReleasePlanResult {
  releases: PlannedRelease[];
  /** package.json of every workspace package after `changeset version`, by name. */
  versioned: Map<string, PackageManifest>;
}

/** Options of `planRelease`. */
export interface PlanReleaseOptions {
  /** Changeset files by id (file name without `.md`); default: the repository's pending ones. */
  changesets?: Record<string, string>;
  /** Edits a manifest before planning (e.g. to show what an old peer range would plan). */
  editManifest?: (manifest: PackageManifest) => void;
}

/**
 * Copies the root manifest, pnpm-workspace.yaml, .changeset/config.json and every
 * workspace package.json into a temporary git repository, writes the changesets, runs
 * `changeset status --output` and then `changeset version`, and returns both results.
 * @throws when changesets exits non-zero (its output is in the error).
 */
export function planRelease(options: PlanReleaseOptions = {}): ReleasePlanResult {
  const directory = mkdtempSync(join(tmpdir(), 'lora-release-plan-'));
  try {
    for (const file of ['package.json', 'pnpm-workspace.yaml', '.changeset/config.json']) {
      mkdirSync(dirname(join(directory, file)), { recursive: true });
      cpSync(join(repositoryRoot, file), join(directory, file));
    }
    // The changelog generator is resolved from the project's node_modules, which the
    // copy has none of; versions and ranges are what is checked here, not changelog text.
    const configPath = join(directory, '.changeset/config.json');
    const config = JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    writeFileSync(configPath, JSON.stringify({ ...config, changelog: false }, null, 2));
    const packages = workspacePackages();
    for (const { directory: packageDirectory, manifest } of packages) {
      options.editManifest?.(manifest);
      mkdirSync(join(directory, packageDirectory), { recursive: true });
      writeFileSync(join(directory, packageDirectory, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    }
    const changesets = options.changesets ?? pendingChangesets();
    for (const [id, text] of Object.entries(changesets)) writeFileSync(join(directory, '.changeset', `${id}.md`), text);

    const git = (...args: string[]) => execFileSync('git', args, { cwd: directory, stdio: 'pipe' });
    git('init', '-q', '-b', 'main');
    git('add', '-A');
    git('-c', 'user.name=release-check', '-c', 'user.email=release-check@localhost', 'commit', '-q', '-m', 'workspace');

    const changeset = (...args: string[]) =>
      execFileSync(process.execPath, [changesetBin, ...args], { cwd: directory, stdio: 'pipe', encoding: 'utf8' });
    changeset('status', '--output', 'plan.json');
    const plan = JSON.parse(readFileSync(join(directory, 'plan.json'), 'utf8')) as { releases: PlannedRelease[] };
    rmSync(join(directory, 'plan.json'));
    changeset('version');
    const versioned = new Map(
      packages.map(({ directory: packageDirectory }) => {
        const manifest = JSON.parse(
          readFileSync(join(directory, packageDirectory, 'package.json'), 'utf8'),
        ) as PackageManifest;
        return [manifest.name, manifest] as const;
      }),
    );
    return { releases: plan.releases, versioned };
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

/** The repository's pending changesets, by id. */
export function pendingChangesets(): Record<string, string> {
  const folder = join(repositoryRoot, '.changeset');
  return Object.fromEntries(
    readdirSync(folder)
      .filter((file) => file.endsWith('.md') && file !== 'README.md')
      .map((file) => [file.slice(0, -3), readFileSync(join(folder, file), 'utf8')]),
  );
}
