// The generate section of `pnpm bench`: tokens/s of @lora/models' generate() on the `small` GPT-2
// (batch 1, greedy, key/value cache) for the base model and a LoRA adapter unmerged and merged,
// and how the per-token cost grows with the prompt. Rows: { kind: 'generate', variant,
// promptLength, newTokens, useCache, backend, threads, prefillMs, tokenMs, tokensPerSec, perTokenVsBase }
// and { kind: 'load', variant: 'generate', backend, threads, competingProcesses, quietTokenMs, loadedTokenMs, slowdown }.
import { fileURLToPath } from 'node:url';
import { runChild, startCompetingProcess, table } from './lib/child.mjs';

const CHILD = fileURLToPath(new URL('./generate-child.mjs', import.meta.url));
const INTERNAL_FIELDS = ['backendKind'];

/** Run the section on the default backend. */
export async function runGenerate({ quick = false, threads, log = (text) => process.stderr.write(`${text}\n`), print = () => {} } = {}) {
  log('generate: small GPT-2, base / LoRA unmerged / LoRA merged, prompts of 16 and 112 tokens…');
  const args = [...(threads === undefined ? [] : ['--threads', String(threads)]), '--reps', quick ? '2' : '15'];
  const result = await runChild(CHILD, args, log);
  if (!result.ok) throw new Error(`The generate benchmark failed: ${result.reason}`);
  const { rows, backendKind, threads: used } = result.value;
  const find = (variant, promptLength, useCache = true) => rows.find((row) => row.variant === variant && row.promptLength === promptLength && row.useCache === useCache);
  const lines = [
    `## generate (${backendKind}, ${used} thread(s); small GPT-2, batch 1, greedy, ${rows[0].newTokens} new tokens)`,
    '',
    table(
      ['model', 'prompt', 'cache', 'prefill ms', 'ms / token', 'tokens/s'],
      rows.map((row) => [row.variant, row.promptLength, row.useCache ? 'yes' : 'no', row.prefillMs.toFixed(1), row.tokenMs.toFixed(2), row.tokensPerSec.toFixed(0)])
    ),
    '',
  ];
  for (const promptLength of [16, 112]) {
    const base = find('base', promptLength);
    const merged = find('lora-merged', promptLength);
    const unmerged = find('lora-unmerged', promptLength);
    if (base && merged && unmerged) {
      lines.push(
        `prompt ${promptLength}: per-token time merged / base ${merged.perTokenVsBase.toFixed(2)}×, unmerged / base ${unmerged.perTokenVsBase.toFixed(
          2
        )}× (medians of the rounds' ratios)`
      );
    }
  }
  const short = find('base', 16);
  const long = find('base', 112);
  const uncached = find('base', 112, false);
  if (short && long) lines.push(`per-token time with a 112-token prompt / a 16-token one (cache): ${(long.tokenMs / short.tokenMs).toFixed(2)}×`);
  if (long && uncached) lines.push(`per-token time without / with the cache (prompt 112): ${(uncached.tokenMs / long.tokenMs).toFixed(1)}×`);
  // Robustness: the base model's decoding without and with a process keeping one core busy, back to back.
  log('generate: the base model without and with a competing busy process…');
  const loadArgs = [...(threads === undefined ? [] : ['--threads', String(threads)]), '--base-only', '--reps', quick ? '3' : '9'];
  const quietRun = await runChild(CHILD, loadArgs, log);
  const stopCompeting = startCompetingProcess();
  const loadedRun = await runChild(CHILD, loadArgs, log).finally(stopCompeting);
  const loadRows = [];
  if (quietRun.ok && loadedRun.ok) {
    const [quietRow] = quietRun.value.rows;
    const [loadedRow] = loadedRun.value.rows;
    loadRows.push({
      kind: 'load',
      variant: 'generate',
      backend: quietRow.backend,
      threads: quietRow.threads,
      competingProcesses: 1,
      quietTokenMs: quietRow.tokenMs,
      loadedTokenMs: loadedRow.tokenMs,
      slowdown: Number((loadedRow.tokenMs / quietRow.tokenMs).toFixed(2)),
    });
    lines.push(
      `under load (base, prompt 16, one competing busy process): ${quietRow.tokenMs.toFixed(2)} → ${loadedRow.tokenMs.toFixed(2)} ms per token, ${(
        loadedRow.tokenMs / quietRow.tokenMs
      ).toFixed(2)}× (back to back)`
    );
  } else {
    lines.push(`under load: skipped (${quietRun.ok ? loadedRun.reason : quietRun.reason})`);
  }
  print(lines.join('\n'));
  return [...rows, ...loadRows].map((row) => Object.fromEntries(Object.entries(row).filter(([key]) => !INTERNAL_FIELDS.includes(key))));
}
