import { promises as fs } from 'node:fs';
import path from 'node:path';
import { CliError } from './errors.js';

/**
 * Refuse `lora forward`'s `--out` unless it is a new file, or (with `overwrite`) a logits file an
 * earlier `lora forward` wrote: a JSON object whose only key is `logits`. Anything else at that path
 * is the user's and is never replaced, `--overwrite` included; nor is the `--input` file itself.
 * Checked before the model is loaded, so a refusal costs nothing.
 * @throws {CliError} exit 2, naming the path and the fix.
 */
export async function assertWritableLogitsFile(out: string, options: { input: string; overwrite?: boolean }): Promise<void> {
  const target = path.resolve(out);
  if (target === path.resolve(options.input)) throw new CliError(`--out ${target} is the --input file; choose another path for the logits.`, { exitCode: 2 });
  let stats;
  try {
    stats = await fs.stat(target);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new CliError(`Cannot check --out ${target} (${(error as NodeJS.ErrnoException).code ?? String(error)}); choose another path.`, { exitCode: 2 });
  }
  if (stats.isDirectory()) throw new CliError(`--out ${target} is a directory; give a file path such as ${path.join(target, 'logits.json')}.`, { exitCode: 2 });
  if (!options.overwrite)
    throw new CliError(`--out ${target} exists; pass --overwrite to replace it (only a logits file lora forward wrote) or choose another path.`, { exitCode: 2 });
  if (!(await isLogitsFile(target))) {
    throw new CliError(`--out ${target} is not a logits file lora forward wrote; it is left untouched, --overwrite included. Choose another path.`, { exitCode: 2 });
  }
}

/** Whether `file` holds what `lora forward` writes: a JSON object with the one key `logits`, an array. */
async function isLogitsFile(file: string): Promise<boolean> {
  try {
    const parsed = JSON.parse(await fs.readFile(file, 'utf8')) as unknown;
    return (
      parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) && Object.keys(parsed).join() === 'logits' && Array.isArray((parsed as { logits: unknown }).logits)
    );
  } catch {
    return false;
  }
}
