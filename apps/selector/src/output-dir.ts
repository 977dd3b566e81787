import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { syncDirectory, writeJsonAtomic } from '@lora/core';
import { faultPoint, pathExists } from '@lora/core/internal';
import { CliError } from './errors.js';

/**
 * The marker file in every directory `lora` writes: only a directory holding it, and nothing beyond
 * the files it lists, each unchanged (or an empty directory), is ever replaced or deleted.
 */
export const OUTPUT_MARKER = '.lora-output.json';

/** What a directory written by `lora` holds, and how far its writing got. */
export interface OutputMarker {
  readonly tool: 'lora';
  readonly kind: 'train' | 'merge' | 'quantize' | 'export';
  /** `running` while being written; `complete` once whole; a stopped training run says why. */
  readonly status: 'running' | 'complete' | 'interrupted' | 'diverged';
  /** The directory this one is written for (absolute). */
  readonly target: string;
  readonly created: string;
  readonly pid: number;
  /** Identifies the writing process's run, so a live run's staging directory is never taken for stale. */
  readonly runId: string;
  /**
   * Every file and directory `lora` wrote there (paths relative to the directory, `/`-separated,
   * the marker left out), recorded when the output is complete: anything else found there later is
   * the user's, and the directory is then never replaced. Absent while a run is being written (and
   * in markers of versions before the list).
   */
  readonly files?: readonly string[];
  /**
   * The size in bytes and modification time (`mtimeMs`) of every regular file in {@link files},
   * taken when the output is complete (no hashing: outputs can be gigabytes): a listed file that no
   * longer matches was changed after lora wrote it, and the directory is then the user's too.
   * Absent while a run is being written, and in markers of versions before it (see
   * {@link outputState} for how those are read).
   */
  readonly fileStats?: Readonly<Record<string, FileStat>>;
}

/** What {@link OutputMarker.fileStats} records of one file. */
export interface FileStat {
  /** Size in bytes. */
  readonly size: number;
  /** Last modification time, in milliseconds since the epoch (`fs.Stats.mtimeMs`). */
  readonly mtimeMs: number;
}

/** The state of an output path. */
export type OutputState =
  | { readonly kind: 'missing' | 'empty' }
  | { readonly kind: 'ours'; readonly marker: OutputMarker }
  | {
      readonly kind: 'foreign';
      /** What lora did not write (relative paths), or with `unlisted` everything there. */
      readonly entries: readonly string[];
      /** Files lora wrote that were changed since (their size or modification time differs from the marker's); absent when none. */
      readonly modified?: readonly string[];
      /** A marker of a lora version that did not list its files: nothing there can be told apart from the user's. */
      readonly unlisted?: boolean;
    }
  | { readonly kind: 'file' };

const STAGING = '.partial-';
const ASIDE = '.old-';
const activeRuns = new Set<string>();

/** Read a directory's marker, or null when it has none (or one that is not ours). */
export async function readMarker(directory: string): Promise<OutputMarker | null> {
  try {
    const json = JSON.parse(await fs.readFile(path.join(directory, OUTPUT_MARKER), 'utf8')) as Partial<OutputMarker>;
    return json.tool === 'lora' && typeof json.status === 'string' && typeof json.target === 'string' ? (json as OutputMarker) : null;
  } catch {
    return null;
  }
}

/** One entry of {@link listTree}: its relative path, and its size and mtime when it is a regular file. */
interface TreeEntry {
  readonly path: string;
  readonly stat: FileStat | null;
}

/**
 * Every file and directory below `directory` (relative, `/`-separated, in walk order), links not
 * followed (a link is listed with no stat, so it never matches a file lora wrote); the top-level
 * marker and its temporary files left out.
 */
async function listTree(directory: string, prefix = ''): Promise<TreeEntry[]> {
  const out: TreeEntry[] = [];
  for (const entry of await fs.readdir(directory, { withFileTypes: true })) {
    const relative = `${prefix}${entry.name}`;
    if (prefix === '' && (entry.name === OUTPUT_MARKER || isMarkerTemporary(entry.name))) continue;
    const full = path.join(directory, entry.name);
    let stat: FileStat | null = null;
    if (entry.isFile()) {
      const stats = await fs.lstat(full);
      stat = { size: stats.size, mtimeMs: stats.mtimeMs };
    }
    out.push({ path: relative, stat });
    if (entry.isDirectory()) out.push(...(await listTree(full, `${relative}/`)));
  }
  return out;
}

/** The temporary file of an atomic write of the marker (core's writeFileAtomic names it so). */
function isMarkerTemporary(name: string): boolean {
  return /^\.\.lora-output\.json\.\d+\.[0-9a-f]+\.tmp$/u.test(name);
}

/**
 * Whether `directory` is missing, empty, written by `lora` (holding only what its marker lists, as
 * it wrote it), someone else's (or lora's with something added or changed), or a file.
 */
export async function outputState(directory: string): Promise<OutputState> {
  let entries: string[];
  try {
    entries = await fs.readdir(directory);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { kind: 'missing' };
    if (code === 'ENOTDIR') return { kind: 'file' };
    throw error;
  }
  if (entries.length === 0) return { kind: 'empty' };
  const marker = entries.includes(OUTPUT_MARKER) ? await readMarker(directory) : null;
  if (!marker) return { kind: 'foreign', entries };
  const present = await listTree(directory);
  if (!Array.isArray(marker.files) || !marker.files.every((file) => typeof file === 'string')) return { kind: 'foreign', entries: present.map((entry) => entry.path), unlisted: true };
  // A file the user added to a finished output (notes beside the adapter, say) makes it theirs too.
  const listed = new Set(marker.files);
  const added = present.filter((entry) => !listed.has(entry.path)).map((entry) => entry.path);
  // So does a file lora wrote that the user has edited since. A marker of the version before
  // `fileStats` already listed its files, so it is read by name only (as that version did) rather
  // than refused: refusing would lock every output of that version out of re-runs and --overwrite,
  // and its directories get no weaker protection than they had.
  const recorded = isFileStats(marker.fileStats) ? marker.fileStats : null;
  const modified = recorded === null ? [] : present.filter((entry) => isChanged(recorded[entry.path], entry.stat)).map((entry) => entry.path);
  if (added.length === 0 && modified.length === 0) return { kind: 'ours', marker };
  return modified.length === 0 ? { kind: 'foreign', entries: added } : { kind: 'foreign', entries: added, modified };
}

/** Whether a marker's `fileStats` is readable: an object of `{ size, mtimeMs }` numbers. */
function isFileStats(value: unknown): value is Readonly<Record<string, FileStat>> {
  return (
    value !== null &&
    typeof value === 'object' &&
    !Array.isArray(value) &&
    Object.values(value).every((stat: unknown) => stat !== null && typeof stat === 'object' && typeof (stat as FileStat).size === 'number' && typeof (stat as FileStat).mtimeMs === 'number')
  );
}

/**
 * Whether a listed path differs from the file lora recorded there: another size or modification
 * time, or no longer a regular file. A file only touched counts as changed too (without hashing,
 * it cannot be told from an edit; refusing is the safe side). Directories are not recorded.
 */
function isChanged(recorded: FileStat | undefined, present: FileStat | null): boolean {
  if (recorded === undefined) return false;
  return present === null || present.size !== recorded.size || present.mtimeMs !== recorded.mtimeMs;
}

/**
 * Refuse an output path unless it is missing, empty, or a directory `lora` wrote (and then only
 * with `overwrite`). A directory with anything else in it is never replaced, `--overwrite` or not.
 * @throws {CliError} exit 2, naming the directory and some of what is in it.
 */
export async function assertWritableOutput(directory: string, options: { overwrite?: boolean; flag?: string } = {}): Promise<OutputState> {
  const target = path.resolve(directory);
  const state = await outputState(target);
  const flag = options.flag ?? '--out';
  if (state.kind === 'file') throw new CliError(`${flag} ${target} is a file, not a directory; choose a new directory.`, { exitCode: 2 });
  if (state.kind === 'foreign' && state.unlisted) {
    throw new CliError(
      `${flag} ${target} was written by an earlier version of lora that did not record its files, so it cannot tell them from yours; it is left untouched. Move or delete it yourself, or choose another ${flag}.`,
      { exitCode: 2 },
    );
  }
  if (state.kind === 'foreign') {
    const shown = (entries: readonly string[]) => entries.slice(0, 3).join(', ') + (entries.length > 3 ? ', …' : '');
    const modified = state.modified ?? [];
    if (modified.length === 0) {
      throw new CliError(
        `${flag} ${target} holds files lora did not write (${shown(state.entries)}); it is left untouched, --overwrite included. Choose a new or empty directory.`,
        { exitCode: 2 },
      );
    }
    const added = state.entries.length === 0 ? '' : `files lora did not write (${shown(state.entries)}) and `;
    throw new CliError(
      `${flag} ${target} holds ${added}files lora wrote that were changed since (${shown(modified)}); it is left untouched, --overwrite included. Move them out, or choose another ${flag}.`,
      { exitCode: 2 },
    );
  }
  if (state.kind === 'ours' && !options.overwrite) {
    throw new CliError(`Output directory ${target} exists and is not empty; pass --overwrite to replace it (an earlier lora ${state.marker.kind}) or choose another ${flag}.`, {
      exitCode: 2,
    });
  }
  return state;
}

function isAlive(marker: OutputMarker): boolean {
  if (marker.pid === -1) return false;
  if (marker.pid === process.pid) return activeRuns.has(marker.runId);
  try {
    process.kill(marker.pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Sibling directories of `target` that `lora` made while writing it: staging and set-aside ones. */
async function siblings(target: string): Promise<{ staging: { path: string; marker: OutputMarker }[]; aside: { path: string; marker: OutputMarker }[] }> {
  const parent = path.dirname(target);
  const base = path.basename(target);
  let names: string[];
  try {
    names = await fs.readdir(parent);
  } catch {
    return { staging: [], aside: [] };
  }
  const staging: { path: string; marker: OutputMarker }[] = [];
  const aside: { path: string; marker: OutputMarker }[] = [];
  for (const name of names) {
    const isStaging = name.startsWith(`${base}${STAGING}`);
    const isAside = name.startsWith(`${base}${ASIDE}`);
    if (!isStaging && !isAside) continue;
    const full = path.join(parent, name);
    const marker = (await readMarker(full)) ?? (isStaging && (await isUnmarkedStaging(full, name, base)) ? unmarked(target) : null);
    // Only what lora wrote, for this target: anything else with a similar name is left alone.
    if (!marker || path.resolve(marker.target) !== target) continue;
    (isStaging ? staging : aside).push({ path: full, marker });
  }
  return { staging, aside };
}

/**
 * A staging directory killed before its marker was in place: exactly our name pattern and nothing
 * in it but the marker's temporary file, so removing it can lose nothing of the user's.
 */
async function isUnmarkedStaging(directory: string, name: string, base: string): Promise<boolean> {
  if (!new RegExp(`^${base.replace(/[.*+?^${}()|[\]\\]/gu, '\\$&')}\\${STAGING}[0-9a-f]{8}$`, 'u').test(name)) return false;
  try {
    const entries = await fs.readdir(directory);
    return entries.every(isMarkerTemporary);
  } catch {
    return false;
  }
}

function unmarked(target: string): OutputMarker {
  return { tool: 'lora', kind: 'merge', status: 'running', target, created: '', pid: -1, runId: '' };
}

async function removeTree(directory: string): Promise<void> {
  faultPoint('remove', directory);
  await fs.rm(directory, { recursive: true, force: true });
}

async function rename(from: string, to: string, options: { sync?: boolean } = {}): Promise<void> {
  faultPoint('rename', to);
  await fs.rename(from, to);
  if (options.sync ?? true) await syncDirectory(path.dirname(to));
}

/** Staging directories of stopped training runs that `lora train --resume` can continue. */
export async function resumableRuns(directory: string): Promise<{ path: string; marker: OutputMarker }[]> {
  const target = path.resolve(directory);
  const { staging } = await siblings(target);
  const out: { path: string; marker: OutputMarker }[] = [];
  for (const entry of staging) {
    if (entry.marker.kind !== 'train' || entry.marker.status === 'complete' || isAlive(entry.marker)) continue;
    out.push(entry);
  }
  return out;
}

/**
 * Finish what a killed run left beside `target`: a replacement cut off between its two renames is
 * completed (or the old directory put back), set-aside old directories are deleted, and staging
 * directories that cannot be resumed are removed. Stopped training runs are kept when `isResumable`
 * says they can be resumed (all of them without it).
 * Returns one line per thing done, for the user.
 */
export async function cleanUpStale(directory: string, options: { isResumable?: (staging: string) => Promise<boolean> } = {}): Promise<string[]> {
  const target = path.resolve(directory);
  const notes: string[] = [];
  const { staging, aside } = await siblings(target);
  const state = await outputState(target);
  if (state.kind === 'missing') {
    const complete = staging.find((entry) => entry.marker.status === 'complete' && !isAlive(entry.marker));
    if (complete) {
      await rename(complete.path, target);
      notes.push(`completed the interrupted replacement of ${target}`);
    } else if (aside.length > 0) {
      await rename(aside[0]!.path, target);
      notes.push(`put back ${target}, set aside by an interrupted replacement`);
    }
  }
  for (const entry of aside) {
    if (await pathExists(entry.path)) {
      await removeTree(entry.path);
      notes.push(`removed ${entry.path}, left by an interrupted replacement`);
    }
  }
  for (const entry of staging) {
    if (!(await pathExists(entry.path)) || isAlive(entry.marker)) continue;
    // A stopped training run stays for --resume unless it has nothing to resume (no checkpoint).
    const stoppedRun = entry.marker.kind === 'train' && entry.marker.status !== 'complete';
    if (stoppedRun && (options.isResumable ? await options.isResumable(entry.path) : true)) continue;
    await removeTree(entry.path);
    notes.push(`removed ${entry.path}, left by an interrupted run`);
  }
  return notes;
}

/**
 * Make a staging directory beside `target` (same file system, so renames are atomic), marked as
 * ours and running.
 */
export async function createStaging(directory: string, kind: OutputMarker['kind']): Promise<string> {
  const target = path.resolve(directory);
  await fs.mkdir(path.dirname(target), { recursive: true });
  const staging = `${target}${STAGING}${randomBytes(4).toString('hex')}`;
  faultPoint('mkdir', staging);
  await fs.mkdir(staging);
  const runId = randomBytes(8).toString('hex');
  activeRuns.add(runId);
  try {
    await writeMarker(staging, { tool: 'lora', kind, status: 'running', target, created: new Date().toISOString(), pid: process.pid, runId });
  } catch (error) {
    activeRuns.delete(runId);
    throw error;
  }
  return staging;
}

/** Adopt a stopped run's staging directory (resuming it): it becomes this process's running run. */
export async function adoptStaging(staging: string): Promise<OutputMarker> {
  const marker = await readMarker(staging);
  if (!marker) throw new CliError(`${staging} is not a directory lora wrote.`, { exitCode: 2 });
  const runId = randomBytes(8).toString('hex');
  activeRuns.add(runId);
  const adopted = { ...marker, status: 'running' as const, pid: process.pid, runId };
  try {
    await writeMarker(staging, adopted);
  } catch (error) {
    activeRuns.delete(runId);
    throw error;
  }
  return adopted;
}

/** Mark a staging directory stopped (it stays for `--resume`), releasing it from this process. */
export async function releaseStaging(staging: string, status: 'interrupted' | 'diverged' | 'running'): Promise<void> {
  const marker = await readMarker(staging);
  if (!marker) return;
  activeRuns.delete(marker.runId);
  await writeMarker(staging, { ...marker, status });
}

/** Forget a staging directory as this process's (after a failure that leaves it to clean-up). */
export function forgetStaging(marker: OutputMarker | null): void {
  if (marker) activeRuns.delete(marker.runId);
}

async function writeMarker(directory: string, marker: OutputMarker): Promise<void> {
  await writeJsonAtomic(path.join(directory, OUTPUT_MARKER), marker);
}

async function syncTree(directory: string): Promise<void> {
  for (const entry of await fs.readdir(directory, { withFileTypes: true })) {
    const full = path.join(directory, entry.name);
    if (entry.isDirectory()) await syncTree(full);
    else if (entry.isFile()) {
      faultPoint('sync', full);
      const handle = await fs.open(full, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
  }
  await syncDirectory(directory);
}

/**
 * Put a finished staging directory in place of `target`: mark it complete with the list of its
 * files and their sizes and mtimes (see {@link OutputMarker.files}, {@link OutputMarker.fileStats}), flush every file and directory, rename the old run aside, rename the new one in, then delete the old one. At every
 * failure and every kill point either the old or the new run is complete (a kill between the two
 * renames leaves both beside `target`, and the next run finishes the replacement); a failed
 * rename puts the old run back.
 */
export async function commitStaging(staging: string, directory: string): Promise<void> {
  const target = path.resolve(directory);
  const marker = await readMarker(staging);
  if (!marker) throw new CliError(`${staging} lost its marker file; not replacing ${target}.`);
  // Taken now, when every file is written: nothing lora does after this writes into the directory
  // (checkpoints stay in staging and are removed before; renames keep sizes and mtimes), so only
  // the user's edits can change them.
  const tree = await listTree(staging);
  const fileStats: Record<string, FileStat> = {};
  for (const entry of tree) if (entry.stat !== null) fileStats[entry.path] = entry.stat;
  await writeMarker(staging, { ...marker, status: 'complete', files: tree.map((entry) => entry.path), fileStats });
  await syncTree(staging);
  await syncDirectory(path.dirname(target));
  const state = await outputState(target);
  if (state.kind === 'foreign' || state.kind === 'file') {
    // Checked at the start; someone put files there since (or the previous output's list was unreadable). Never replace them.
    throw new CliError(`${target} now holds files lora did not write or changed since it wrote them; the new output is kept in ${staging}.`, { exitCode: 1 });
  }
  let aside: string | null = null;
  if (state.kind !== 'missing') {
    aside = `${target}${ASIDE}${randomBytes(4).toString('hex')}`;
    await rename(target, aside);
  }
  try {
    await rename(staging, target, { sync: false });
  } catch (error) {
    if (aside) {
      // Put the old run back; the new one stays in its staging directory.
      await rename(aside, target);
    }
    throw new CliError(`Could not move the new output into ${target} (${(error as NodeJS.ErrnoException).code ?? String(error)}); the previous contents are unchanged.`, { cause: error });
  }
  await syncDirectory(path.dirname(target));
  activeRuns.delete(marker.runId);
  if (aside) await removeTree(aside);
}

/**
 * Write a directory as one unit: refuse a target that is not ours, clean up what killed runs left,
 * let `write` fill a staging directory, then {@link commitStaging}. A failure leaves the previous
 * contents (or nothing) and removes the staging directory.
 */
export async function writeDirectoryAtomically(
  directory: string,
  write: (staging: string) => Promise<void>,
  options: { overwrite?: boolean; kind: OutputMarker['kind'] },
): Promise<void> {
  const target = path.resolve(directory);
  await cleanUpStale(target);
  await assertWritableOutput(target, { overwrite: options.overwrite });
  const staging = await createStaging(target, options.kind);
  try {
    await write(staging);
    await commitStaging(staging, target);
  } catch (error) {
    const marker = await readMarker(staging).catch(() => null);
    forgetStaging(marker);
    if (await pathExists(staging)) await removeTree(staging);
    throw error;
  }
}
