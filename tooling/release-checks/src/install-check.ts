// Installs packed tarballs the way a user would — plain npm, in a directory outside the
// workspace — and runs code there, so an undeclared dependency, a file left out of `files`, a
// `workspace:` range that was not rewritten or a broken `exports` map fails here and not for users.
import { execFile, type ExecFileOptions } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, lstatSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { repositoryRoot, publicPackages } from './workspace.js';

const run = promisify(execFile);
const require = createRequire(import.meta.url);

/** How to call pnpm: the one running this test when there is one, else the version the root pins. */
function pnpm(): { file: string; prefix: string[] } {
  const execPath = process.env['npm_execpath'];
  if (execPath && /pnpm\.c?js$/.test(execPath)) return { file: process.execPath, prefix: [execPath] };
  const manifest = JSON.parse(readFileSync(join(repositoryRoot, 'package.json'), 'utf8')) as { packageManager: string };
  return { file: 'npx', prefix: ['-y', manifest.packageManager] };
}

/**
 * The environment for npm and for the scripts run in an install: pnpm's `npm_config_*` /
 * `npm_package_*` variables (set when this runs under `pnpm test`) are dropped so npm behaves as it
 * does for a user, and so is `NODE_PATH`, which pnpm's bin shims point at the workspace's store —
 * through it `require` would find packages the install does not have. The registry, cache and user
 * config a machine sets are kept.
 */
function npmEnvironment(): NodeJS.ProcessEnv {
  const keep = new Set(['npm_config_registry', 'npm_config_cache', 'npm_config_userconfig']);
  return Object.fromEntries(
    Object.entries(process.env).filter(([key]) => {
      const lower = key.toLowerCase();
      if (lower === 'node_path') return false;
      return keep.has(lower) || !(lower.startsWith('npm_') || lower.startsWith('pnpm_'));
    }),
  );
}

/** A packed package: its name, tarball path and size. */
export interface PackedPackage {
  name: string;
  version: string;
  tarball: string;
  bytes: number;
}

/**
 * `pnpm pack` every public workspace package into `destination` (pnpm rewrites `workspace:` and
 * `catalog:` ranges to real ones, as `pnpm publish` does). Two at a time: the machine has 2 cores.
 */
export async function packPublicPackages(destination: string): Promise<Map<string, PackedPackage>> {
  const { file, prefix } = pnpm();
  const packages = publicPackages();
  const packed = new Map<string, PackedPackage>();
  const queue = [...packages];
  const worker = async () => {
    for (let entry = queue.shift(); entry; entry = queue.shift()) {
      const { stdout } = await run(file, [...prefix, 'pack', '--pack-destination', destination], {
        cwd: join(repositoryRoot, entry.directory),
        env: npmEnvironment(),
        maxBuffer: 64 * 1024 * 1024,
      });
      const tarball = stdout
        .trim()
        .split('\n')
        .map((line) => line.trim())
        .reverse()
        .find((line) => line.endsWith('.tgz'));
      if (!tarball) throw new Error(`pnpm pack printed no tarball for ${entry.manifest.name}:\n${stdout}`);
      const path = resolve(destination, tarball);
      packed.set(entry.manifest.name, {
        name: entry.manifest.name,
        version: entry.manifest.version,
        tarball: path,
        bytes: lstatSync(path).size,
      });
    }
  };
  await Promise.all([worker(), worker()]);
  return packed;
}

/** A temporary directory outside the repository (so nothing resolves from the workspace's node_modules). */
export function scratchDirectory(prefix: string): string {
  const directory = mkdtempSync(join(tmpdir(), prefix));
  if (!relative(repositoryRoot, directory).startsWith('..')) {
    throw new Error(`The temporary directory ${directory} is inside the repository ${repositoryRoot}; set TMPDIR elsewhere.`);
  }
  return directory;
}

/** Make `directory` an npm project (ESM by default) and `npm install` the given specs into it. */
export async function npmInstall(directory: string, specs: readonly string[], options: { type?: 'module' | 'commonjs' } = {}): Promise<void> {
  mkdirSync(directory, { recursive: true });
  const manifest = join(directory, 'package.json');
  try {
    readFileSync(manifest);
  } catch {
    writeFileSync(manifest, `${JSON.stringify({ name: 'install-check', private: true, type: options.type ?? 'module' }, null, 2)}\n`);
  }
  await runChecked('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', ...specs], { cwd: directory, env: npmEnvironment() });
}

/**
 * Run a command without blocking this process (the test runner keeps talking to its workers), in
 * the user-like environment of `npmEnvironment` unless `options.env` is given; on failure throw
 * with its exit code, stdout and stderr.
 */
export async function runChecked(file: string, args: readonly string[], options: ExecFileOptions & { cwd: string }): Promise<string> {
  try {
    const { stdout } = await run(file, [...args], { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, ...options, env: options.env ?? npmEnvironment() });
    return String(stdout);
  } catch (error) {
    const failure = error as { code?: number | string; stdout?: string; stderr?: string };
    throw new Error(
      `\`${file} ${args.join(' ')}\` in ${options.cwd} exited ${String(failure.code)}\n--- stdout\n${failure.stdout ?? ''}\n--- stderr\n${failure.stderr ?? ''}`,
    );
  }
}

/** Write `source` to `file` in `directory` and run it with node; returns stdout, throws on a non-zero exit. */
export async function runNodeScript(directory: string, file: string, source: string): Promise<string> {
  writeFileSync(join(directory, file), source);
  return runChecked(process.execPath, [file], { cwd: directory, env: npmEnvironment() });
}

/** Bytes of every file under `directory` (apparent sizes, links not followed), as `du --apparent-size -b` counts. */
export function directoryBytes(directory: string): number {
  let total = 0;
  for (const entry of readdirSync(directory, { withFileTypes: true })) {
    const path = join(directory, entry.name);
    if (entry.isDirectory()) total += directoryBytes(path);
    else if (entry.isFile()) total += lstatSync(path).size;
  }
  return total;
}

/** The module resolutions a TypeScript consumer is checked under. */
export type ConsumerResolution = 'node16' | 'bundler';

/**
 * Type-check TypeScript consumer files in `directory` with the workspace's TypeScript (a tool,
 * not a dependency under test), resolving packages from `directory`'s node_modules only.
 */
export async function typecheckConsumer(directory: string, files: Readonly<Record<string, string>>, resolution: ConsumerResolution): Promise<void> {
  const folder = join(directory, `ts-${resolution}`);
  mkdirSync(folder, { recursive: true });
  for (const [name, source] of Object.entries(files)) writeFileSync(join(folder, name), source);
  const compilerOptions = {
    strict: true,
    noEmit: true,
    target: 'ES2022',
    lib: ['ES2022', 'DOM'],
    // Our .d.ts files are checked too: a type imported from a package the consumer does not have fails here.
    // `types` stays unset so the @types packages npm installed with tfjs-core (long, seedrandom) are seen.
    skipLibCheck: false,
    ...(resolution === 'node16' ? { module: 'node16', moduleResolution: 'node16' } : { module: 'esnext', moduleResolution: 'bundler' }),
  };
  writeFileSync(join(folder, 'tsconfig.json'), JSON.stringify({ compilerOptions, include: Object.keys(files) }, null, 2));
  await runChecked(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', folder], { cwd: directory });
}
