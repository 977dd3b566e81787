import { PassThrough } from 'node:stream';
import path from 'node:path';
import { runCli, type ProgramContext } from '../src/index.js';

export const FIXTURES = path.resolve(__dirname, '../../../fixtures/reference');
export const GPT2 = path.join(FIXTURES, 'models/gpt2');
export const BERT = path.join(FIXTURES, 'models/bert');

/** Run the CLI in-process with captured output. */
export async function run(
  argv: readonly string[],
  options: Partial<ProgramContext> & { input?: PassThrough; onOutput?: (screenSoFar: string) => void } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  // What a user would see on the terminal: both streams, in order.
  let screen = '';
  stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString();
    screen += chunk.toString();
    options.onOutput?.(screen);
  });
  stderr.on('data', (chunk: Buffer) => {
    err += chunk.toString();
    screen += chunk.toString();
    options.onOutput?.(screen);
  });
  const code = await runCli(argv, {
    stdout,
    stderr,
    stdin: options.input ?? new PassThrough(),
    interactive: options.interactive ?? false,
    loader: options.loader,
  });
  return { code, stdout: out, stderr: err };
}
