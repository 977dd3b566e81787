// The architectures section of `pnpm bench` (`pnpm bench --only architectures`): a LoRA training step
// of each architecture @lora/models implements, at the `small` sizes, on the default backend: its
// time (the median of the rounds' medians), tokens/s, kernel calls, and its ratio to GPT-2's step
// within the run. Each round runs every architecture in its own process, in turn, so the machine's
// drift hits all alike. Rows: { kind: 'architecture', architecture, backend, threads, stepMs, tokensPerSec, kernelCalls, vsGpt2, roundMs }.
import { fileURLToPath } from 'node:url';
import { median, runChild, table } from './lib/child.mjs';
import { ARCHITECTURES } from './lib/architectures.mjs';
import { CONFIGS } from './lib/gpt2.mjs';

const CHILD = fileURLToPath(new URL('./architectures-child.mjs', import.meta.url));

/** Run the section: `quick` one round of 2 timed steps, else 3 rounds of 6. */
export async function runArchitectures({ quick = false, threads, log = (text) => process.stderr.write(`${text}\n`), print = () => {} } = {}) {
  const names = Object.keys(ARCHITECTURES);
  const rounds = quick ? 1 : 3;
  log(`architectures: a LoRA step of ${names.join(', ')} at the small sizes, ${rounds} round(s), each in its own process…`);
  const perRound = new Map(names.map((name) => [name, []]));
  let last = null;
  for (let round = 0; round < rounds; round++) {
    for (const name of names) {
      const result = await runChild(CHILD, ['--architecture', name, '--steps', quick ? '2' : '6', ...(threads === undefined ? [] : ['--threads', String(threads)])], log);
      if (!result.ok) throw new Error(`The ${name} step failed: ${result.reason}`);
      perRound.get(name).push({ ms: median(result.value.stepMs), kernelCalls: result.value.kernelCalls });
      last = result.value;
    }
  }
  const tokens = CONFIGS.small.batchSize * CONFIGS.small.seqLen;
  const gpt2Ms = median(perRound.get('gpt2').map((entry) => entry.ms));
  const rows = names.map((name) => {
    const entries = perRound.get(name);
    const stepMs = median(entries.map((entry) => entry.ms));
    return {
      kind: 'architecture',
      architecture: name,
      backend: last.backend,
      threads: last.threads,
      stepMs: Number(stepMs.toFixed(1)),
      tokensPerSec: Math.round((tokens / stepMs) * 1000),
      kernelCalls: entries[0].kernelCalls,
      vsGpt2: Number((stepMs / gpt2Ms).toFixed(2)),
      roundMs: entries.map((entry) => Number(entry.ms.toFixed(1))),
    };
  });
  print(
    [
      `## architectures (${last.backendKind}, ${last.threads} thread(s); a LoRA step at the small sizes, batch 8 × 128; median of ${rounds} round(s))`,
      '',
      table(
        ['architecture', 'step ms', 'tokens/s', 'kernel calls', '× GPT-2', 'rounds (ms)'],
        rows.map((row) => [row.architecture, row.stepMs.toFixed(1), row.tokensPerSec, row.kernelCalls, row.vsGpt2.toFixed(2), row.roundMs.join(', ')]),
        ['left'],
      ),
    ].join('\n'),
  );
  return rows;
}
