// The throughput section of `pnpm bench`: matMul GFLOP/s per available backend, and tokens/s of
// LoRA training, full fine-tuning and the forward pass on the `small` GPT-2 configuration (and of
// DoRA, AdaLoRA and QLoRA steps on the default backend).
// Each measurement runs in a child process (tfjs backends are per process); a backend whose
// child fails is reported as skipped, never fatal.
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { median, runChild as runScript, startCompetingProcess, table } from './lib/child.mjs';
import { referenceBlasWarning, runTorchReference } from './lib/torch.mjs';
import { METHOD_VARIANTS, VARIANTS } from './lib/variants.mjs';

const CHILD = fileURLToPath(new URL('./throughput-child.mjs', import.meta.url));
/** Fields the children add for the summary; the JSON rows keep the documented shape. */
const INTERNAL_FIELDS = ['backendKind', 'isDefault'];
const runChild = (args, log) => runScript(CHILD, args, log);

const publicRow = (row) => Object.fromEntries(Object.entries(row).filter(([key]) => !INTERNAL_FIELDS.includes(key)));

/**
 * Run the section. `quick` halves the work (for smoke runs). Returns the JSON rows; `print`
 * receives the human-readable report.
 */
export async function runThroughput({ quick = false, threads, log = (text) => process.stderr.write(`${text}\n`), print = () => {} } = {}) {
  const threadArgs = threads === undefined ? [] : ['--threads', String(threads)];
  log('throughput: matMul 1024² on every backend (interleaved, best of 7)…');
  const matmul = await runChild(['matmul', '--size', '1024', '--reps', quick ? '3' : '7', ...threadArgs], log);
  if (!matmul.ok) throw new Error(`The matMul benchmark failed: ${matmul.reason}`);
  const { rows: matmulRows, doctor, attempts } = matmul.value;

  // Train on every backend that can start: the default one, the rest of the WASM/JS ladder, and
  // the native ones useBestBackend found.
  const kinds = [];
  for (const attempt of attempts) if (attempt.outcome === 'selected') kinds.push(attempt.kind);
  for (const kind of ['wasm-threads', 'wasm', 'cpu']) {
    if (kinds.includes(kind)) continue;
    if (kind === 'wasm-threads' && !matmulRows.some((row) => row.backendKind === 'wasm-threads')) continue;
    kinds.push(kind);
  }
  const trainRows = [];
  const skipped = [];
  // Medians of 5 steps (2 with --quick): a step's time varies by ±10% on a shared machine.
  const steps = quick ? '2' : '5';
  // Rounds of the PyTorch comparison: the default backend's steps, then PyTorch's, back to back.
  // A shared machine's speed drifts by 10-20% over minutes (both frameworks' figures moved
  // together), so one pair can catch the two in different phases; the ratio reported is the median
  // of the rounds' ratios.
  const torchRounds = quick ? 1 : 3;
  const rounds = [];
  let torchFailure = null;
  const compareWithTorch = async (ours) => {
    log(`throughput: the same steps in PyTorch (bench/torch/small_lora_step.py, 1 thread), round ${rounds.length + 1} of ${torchRounds}…`);
    const torch = await runTorchReference({ steps: Number(steps), log });
    if (torch.ok) rounds.push({ ours, torch: torch.value });
    else torchFailure = torch.reason;
    return torch.ok;
  };
  for (const kind of kinds) {
    log(`throughput: small GPT-2 forward, LoRA and full fine-tuning steps${kind === kinds[0] ? ' (and DoRA, AdaLoRA, QLoRA)' : ''} on ${kind}…`);
    // The other methods' steps on the default backend only (the plain-JS one takes ~30 s a step).
    const variants = kind === kinds[0] ? ['--variants', [...VARIANTS, ...METHOD_VARIANTS].join(',')] : [];
    const result = await runChild(['train', '--backend', kind, '--steps', steps, ...variants, ...threadArgs], log);
    if (result.ok) trainRows.push(...result.value.rows);
    else skipped.push(`${kind}: ${result.reason}`);
    if (kind === kinds[0] && result.ok && (await compareWithTorch(result.value.rows))) {
      // More rounds of the two, each the default backend's forward, LoRA and full steps again.
      while (rounds.length < torchRounds) {
        log(`throughput: the default backend's steps again (${kinds[0]}), round ${rounds.length + 1} of ${torchRounds}…`);
        const again = await runChild(['train', '--backend', kind, '--steps', steps, '--variants', VARIANTS.join(','), ...threadArgs], log);
        if (!again.ok) {
          skipped.push(`PyTorch comparison round ${rounds.length + 1}: ${again.reason}`);
          break;
        }
        if (!(await compareWithTorch(again.value.rows))) break;
      }
    }
  }

  // Robustness: the default backend's LoRA step with and without a process keeping one core busy, back to back.
  log(`throughput: LoRA steps on ${kinds[0]} without and with a competing busy process…`);
  const quiet = await runChild(['train', '--backend', kinds[0], '--steps', steps, '--variants', 'lora', ...threadArgs], log);
  const stopCompeting = startCompetingProcess();
  const loaded = await runChild(['train', '--backend', kinds[0], '--steps', steps, '--variants', 'lora', ...threadArgs], log).then(async (result) => {
    // Under the same load, one WASM thread instead of the pool: the thread count to choose on a busy machine.
    if (kinds[0] !== 'wasm-threads') return { result, single: null };
    log('throughput: the same loaded LoRA steps on one WASM thread…');
    return { result, single: await runChild(['train', '--backend', 'wasm', '--threads', '1', '--steps', steps, '--variants', 'lora'], log) };
  }).finally(stopCompeting);
  const singleStepMs = loaded.single?.ok ? loaded.single.value.rows[0].stepMs : null;
  const loadRows =
    quiet.ok && loaded.result.ok
      ? [
          {
            kind: 'load',
            variant: 'lora',
            backend: quiet.value.rows[0].backend,
            threads: quiet.value.rows[0].threads,
            competingProcesses: 1,
            quietStepMs: quiet.value.rows[0].stepMs,
            loadedStepMs: loaded.result.value.rows[0].stepMs,
            slowdown: Number((loaded.result.value.rows[0].stepMs / quiet.value.rows[0].stepMs).toFixed(2)),
            loadedSingleThreadStepMs: singleStepMs,
            singleThreadSpeedup: singleStepMs === null ? null : Number((loaded.result.value.rows[0].stepMs / singleStepMs).toFixed(2)),
            backendKind: kinds[0],
          },
        ]
      : [];
  if (loadRows.length === 0) skipped.push(`load comparison: ${quiet.ok ? loaded.result.reason : quiet.reason}`);

  const config = { tokens: 8 * 128 };
  const tokensPerSec = (stepMs) => Number(((config.tokens * 1000) / stepMs).toFixed(1));
  const first = rounds[0]?.torch;
  // One row per PyTorch variant: its step time is the median over the rounds.
  const torchRows = first
    ? first.rows.map((row) => {
        const stepMs = median(rounds.map((round) => round.torch.rows.find((other) => other.variant === row.variant).stepMs));
        return { kind: 'reference', framework: 'pytorch', variant: row.variant, config: 'small', threads: first.threads, torch: first.torch, blas: first.blas, stepMs, tokensPerSec: tokensPerSec(stepMs) };
      })
    : [];
  if (torchFailure !== null) skipped.push(`PyTorch reference${rounds.length > 0 ? ` round ${rounds.length + 1}` : ''}: ${torchFailure}`);
  const ratioRows = torchRows.flatMap((reference) => {
    const perRound = rounds.flatMap((round) => {
      const ours = round.ours.find((row) => row.variant === reference.variant);
      const theirs = round.torch.rows.find((row) => row.variant === reference.variant);
      return ours && theirs ? [{ tokensPerSec: ours.tokensPerSec, pytorchTokensPerSec: tokensPerSec(theirs.stepMs), ratio: Number((ours.tokensPerSec / tokensPerSec(theirs.stepMs)).toFixed(3)) }] : [];
    });
    if (perRound.length === 0) return [];
    const ours = rounds[0].ours.find((row) => row.variant === reference.variant);
    return [
      {
        kind: 'vs-pytorch',
        variant: reference.variant,
        backend: ours.backend,
        threads: ours.threads,
        tokensPerSec: median(perRound.map((round) => round.tokensPerSec)),
        pytorchTokensPerSec: median(perRound.map((round) => round.pytorchTokensPerSec)),
        ratio: median(perRound.map((round) => round.ratio)),
        rounds: perRound,
        backendKind: kinds[0],
      },
    ];
  });

  const defaultRow = matmulRows.find((row) => row.isDefault);
  const singleWasm = matmulRows.find((row) => row.backendKind === 'wasm');
  const lines = [
    `## throughput (${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.availableParallelism?.() ?? os.cpus().length} cores available, Node ${process.version})`,
    '',
    doctor,
    '',
    table(
      ['backend', 'threads', 'size', 'GFLOP/s'],
      matmulRows.map((row) => [`${row.backendKind}${row.isDefault ? ' (default)' : ''}`, row.threads, `${row.size}²`, row.gflops.toFixed(1)]),
    ),
  ];
  if (defaultRow && singleWasm && defaultRow !== singleWasm) {
    lines.push('', `default vs single-threaded WASM, 1024² matMul: ${(defaultRow.gflops / singleWasm.gflops).toFixed(2)}× (same run, interleaved)`);
  }
  lines.push(
    '',
    table(
      ['backend', 'threads', 'variant', 'step ms', 'tokens/s'],
      trainRows.map((row) => [row.backendKind, row.threads, row.variant, row.stepMs.toFixed(0), row.tokensPerSec.toFixed(0)]),
    ),
  );
  for (const kind of new Set(trainRows.map((row) => row.backendKind))) {
    const lora = trainRows.find((row) => row.backendKind === kind && row.variant === 'lora');
    const full = trainRows.find((row) => row.backendKind === kind && row.variant === 'full');
    if (lora && full) lines.push(`LoRA / full fine-tuning step time on ${kind}: ${(lora.stepMs / full.stepMs).toFixed(2)}`);
  }
  if (ratioRows.length > 0) {
    const { torch: version, blas, threads: torchThreads } = torchRows[0];
    const blasWarning = referenceBlasWarning(blas);
    lines.push(
      '',
      `PyTorch ${version} CPU, ${torchThreads} thread, BLAS ${blas} — ${rounds.length} round(s), each ${kinds[0]}'s steps then PyTorch's, back to back (medians over the rounds; the ratio is the median of the rounds' ratios):`,
      ...(blasWarning === null ? [] : [blasWarning]),
      '',
      table(
        ['variant', `${kinds[0]} tokens/s`, 'PyTorch tokens/s', 'ratio', 'each round'],
        ratioRows.map((row) => [row.variant, row.tokensPerSec.toFixed(0), row.pytorchTokensPerSec.toFixed(0), `${row.ratio.toFixed(2)}×`, row.rounds.map((round) => round.ratio.toFixed(2)).join(', ')]),
      ),
    );
  }
  for (const row of loadRows) {
    lines.push('', `Under load (${kinds[0]}, LoRA step, one competing busy process): ${row.quietStepMs.toFixed(0)} ms → ${row.loadedStepMs.toFixed(0)} ms, ${row.slowdown.toFixed(2)}× slower (back to back).`);
    if (row.loadedSingleThreadStepMs !== null) {
      lines.push(`The same load, one WASM thread: ${row.loadedSingleThreadStepMs.toFixed(0)} ms, ${row.singleThreadSpeedup.toFixed(2)}× the ${row.threads}-thread step's speed (load average ${os.loadavg()[0].toFixed(1)} after the run).`);
    }
  }
  if (skipped.length > 0) lines.push('', ...skipped.map((line) => `skipped: ${line}`));
  lines.push('', 'small = GPT-2 shape, byte vocabulary 257, d_model 256, 4 layers, 4 heads, batch 8 × 128 tokens; LoRA r=8, alpha=16 on attn.c_attn and attn.c_proj.');
  print(lines.join('\n'));
  return [...matmulRows, ...trainRows, ...torchRows, ...ratioRows, ...loadRows].map(publicRow);
}
