// The generate section of `pnpm bench`: tokens/s of @lora/models' generate() on the `small` GPT-2
// (batch 1, greedy, key/value cache) for the base model and a LoRA adapter unmerged and merged,
// and how the per-token cost grows with the prompt. Rows: { kind: 'generate', variant,
// promptLength, newTokens, useCache, backend, threads, prefillMs, tokenMs, tokensPerSec, perTokenVsBase, perTokenVsBaseByOrder }
// and { kind: 'load', variant: 'generate', backend, threads, competingProcesses, quietTokenMs, loadedTokenMs, slowdown }.
import { fileURLToPath } from 'node:url';
import { runChild, startCompetingProcess, table } from './lib/child.mjs';

const CHILD = fileURLToPath(new URL('./generate-child.mjs', import.meta.url));
const INTERNAL_FIELDS = ['backendKind'];

/**
 * One row per variant, prompt and cache setting from the two processes' (`first`: the base model made
 * first; `last`: made last): times the mean of the two, ratios to the base their geometric mean
 * (which cancels a speed the order alone gives), with the two ratios in `perTokenVsBaseByOrder`.
 */
function combineOrders(first, last) {
  return first.map((row) => {
    const other = last.find((candidate) => candidate.variant === row.variant && candidate.promptLength === row.promptLength && candidate.useCache === row.useCache);
    const mean = (key) => Number(((row[key] + other[key]) / 2).toFixed(3));
    const tokenMs = mean('tokenMs');
    const combined = { ...row, prefillMs: mean('prefillMs'), tokenMs, tokensPerSec: Number((1000 / tokenMs).toFixed(1)) };
    if (row.perTokenVsBase === undefined) return combined;
    const byOrder = [row.perTokenVsBase, other.perTokenVsBase];
    return { ...combined, perTokenVsBase: Number(Math.sqrt(byOrder[0] * byOrder[1]).toFixed(3)), perTokenVsBaseByOrder: byOrder };
  });
}

/** Run the section on the default backend. */
export async function runGenerate({ quick = false, threads, log = (text) => process.stderr.write(`${text}\n`), print = () => {} } = {}) {
  log('generate: small GPT-2, base / LoRA unmerged / LoRA merged, prompts of 16 and 112 tokens…');
  const args = [...(threads === undefined ? [] : ['--threads', String(threads)]), '--reps', quick ? '2' : '15'];
  // Two processes, the base model made first in one and last in the other: where a model's weights
  // lie in memory moves its speed by a few per cent, as much as the ratios measure.
  const result = await runChild(CHILD, args, log);
  if (!result.ok) throw new Error(`The generate benchmark failed: ${result.reason}`);
  const reversed = await runChild(CHILD, [...args, '--adapters-first'], log);
  if (!reversed.ok) throw new Error(`The generate benchmark failed: ${reversed.reason}`);
  const { backendKind, threads: used } = result.value;
  const rows = combineOrders(result.value.rows, reversed.value.rows);
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
        `prompt ${promptLength}: per-token time merged / base ${merged.perTokenVsBase.toFixed(2)}× (${merged.perTokenVsBaseByOrder.map((ratio) => ratio.toFixed(3)).join(', ')}), unmerged / base ${unmerged.perTokenVsBase.toFixed(
          2
        )}× (${unmerged.perTokenVsBaseByOrder.map((ratio) => ratio.toFixed(3)).join(', ')}) (each the geometric mean of two processes' medians of the rounds' ratios: base made first, base made last)`
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
