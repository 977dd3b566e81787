// The throughput section of `pnpm bench`: matMul GFLOP/s per available backend, and tokens/s of
// LoRA training, full fine-tuning and the forward pass on the `small` GPT-2 configuration (and of
// DoRA, AdaLoRA and QLoRA steps on the default backend).
// Each measurement runs in a child process (tfjs backends are per process); a backend whose
// child fails is reported as skipped, never fatal.
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { runChild as runScript, startCompetingProcess, table } from './lib/child.mjs';
import { runTorchReference } from './lib/torch.mjs';
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
  let torch = null;
  for (const kind of kinds) {
    log(`throughput: small GPT-2 forward, LoRA and full fine-tuning steps${kind === kinds[0] ? ' (and DoRA, AdaLoRA, QLoRA)' : ''} on ${kind}…`);
    // The other methods' steps on the default backend only (the plain-JS one takes ~30 s a step).
    const variants = kind === kinds[0] ? ['--variants', [...VARIANTS, ...METHOD_VARIANTS].join(',')] : [];
    const result = await runChild(['train', '--backend', kind, '--steps', steps, ...variants, ...threadArgs], log);
    if (result.ok) trainRows.push(...result.value.rows);
    else skipped.push(`${kind}: ${result.reason}`);
    if (kind === kinds[0]) {
      // Right after the default backend, so both see the same machine.
      log('throughput: the same steps in PyTorch (bench/torch/small_lora_step.py, 1 thread)…');
      torch = await runTorchReference({ steps: Number(steps), log });
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
  const torchRows = torch?.ok
    ? torch.value.rows.map((row) => ({
        kind: 'reference',
        framework: 'pytorch',
        variant: row.variant,
        config: 'small',
        threads: torch.value.threads,
        torch: torch.value.torch,
        blas: torch.value.blas,
        stepMs: row.stepMs,
        tokensPerSec: Number(((config.tokens * 1000) / row.stepMs).toFixed(1)),
      }))
    : [];
  if (torch && !torch.ok) skipped.push(`PyTorch reference: ${torch.reason}`);
  const defaultTrain = trainRows.filter((row) => row.backendKind === kinds[0]);
  const ratioRows = torchRows.flatMap((reference) => {
    const ours = defaultTrain.find((row) => row.variant === reference.variant);
    return ours ? [{ kind: 'vs-pytorch', variant: reference.variant, backend: ours.backend, threads: ours.threads, tokensPerSec: ours.tokensPerSec, pytorchTokensPerSec: reference.tokensPerSec, ratio: Number((ours.tokensPerSec / reference.tokensPerSec).toFixed(3)), backendKind: kinds[0] }] : [];
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
    lines.push(
      '',
      `PyTorch ${version} CPU, ${torchThreads} thread, BLAS ${blas} — measured right after ${kinds[0]}:`,
      '',
      table(
        ['variant', `${kinds[0]} tokens/s`, 'PyTorch tokens/s', 'ratio'],
        ratioRows.map((row) => [row.variant, row.tokensPerSec.toFixed(0), row.pytorchTokensPerSec.toFixed(0), `${row.ratio.toFixed(2)}×`]),
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
