// The PyTorch reference of `pnpm bench`: bench/torch/small_lora_step.py, run when a Python with
// torch is found (LORA_BENCH_PYTHON, else python3, else /usr/bin/python3 — Debian's python3-torch
// installs for the system Python, which a pyenv or venv python3 may hide).
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { runChild } from './child.mjs';

const SCRIPT = fileURLToPath(new URL('../torch/small_lora_step.py', import.meta.url));

/** The first Python that imports torch, or a reason why none does. */
export function findTorchPython() {
  const candidates = [process.env.LORA_BENCH_PYTHON, 'python3', '/usr/bin/python3'].filter((candidate) => candidate !== undefined && candidate !== '');
  const reasons = [];
  for (const python of [...new Set(candidates)]) {
    // Outside the bench directory: there, `import torch` finds bench/torch/ (this script's folder) as
    // a namespace package and succeeds without PyTorch.
    const probe = spawnSync(python, ['-c', 'import torch; torch.zeros(1)'], { encoding: 'utf8', timeout: 60_000, cwd: tmpdir() });
    if (probe.status === 0) return { python };
    const why = probe.error ? probe.error.code ?? probe.error.message : (probe.stderr.trim().split('\n').pop() ?? `exit ${probe.status}`);
    reasons.push(`${python}: ${why}`);
  }
  return { reason: `no Python with torch (${reasons.join('; ')}); on Debian: apt-get install python3-torch` };
}

/**
 * Run the reference steps (one thread: on a small machine more threads oversubscribe it).
 * Resolves `{ ok: true, value: { torch, threads, blas, rows } }` or `{ ok: false, reason }`.
 */
export async function runTorchReference({ steps = 3, variants = 'forward,lora,full', log }) {
  const found = findTorchPython();
  if (found.python === undefined) return { ok: false, reason: found.reason };
  return runChild(SCRIPT, ['--threads', '1', '--steps', String(steps), '--variants', variants], log, found.python);
}

/**
 * A warning when the BLAS libraries PyTorch loaded (the reference script's `blas`, comma-separated)
 * include no optimized one: Debian's torch uses whichever `libblas.so.3` is selected, and the
 * reference BLAS runs its products ~40× slower than OpenBLAS, which makes every ratio to PyTorch
 * meaningless. Null when an optimized BLAS is among them.
 */
export function referenceBlasWarning(blas) {
  if (/openblas|mkl|blis|atlas|accelerate/iu.test(blas)) return null;
  return `! PyTorch loaded no optimized BLAS (${blas}): on the reference BLAS its steps run ~40× slower than on OpenBLAS, so the ratios below are no anchor. On Debian: apt-get install libopenblas0-pthread.`;
}
