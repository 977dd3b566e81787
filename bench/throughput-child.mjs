// One measurement in its own process (tfjs backends are per process):
//   node bench/throughput-child.mjs matmul --size 1024 [--threads N] [--reps 7]
//   node bench/throughput-child.mjs train --backend wasm-threads [--threads N] [--steps 3] [--config small] [--variants forward,lora,full]
// Prints one JSON object on its last stdout line; everything else goes to stderr.
import { parseArgs } from 'node:util';
import { cudaBackend, tf } from './lib/packages.mjs';
import { median } from './lib/child.mjs';
import { CONFIGS } from './lib/gpt2.mjs';
import { runVariant, VARIANTS } from './lib/variants.mjs';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    backend: { type: 'string' },
    threads: { type: 'string' },
    size: { type: 'string', default: '1024' },
    reps: { type: 'string', default: '7' },
    steps: { type: 'string', default: '3' },
    config: { type: 'string', default: 'small' },
    variants: { type: 'string', default: VARIANTS.join(',') },
  },
});
const threads = values.threads === undefined ? undefined : Number(values.threads);

/** The attempt list of a report, for the parent's summary. */
const attemptsOf = (report) => report.attempts.map(({ kind, outcome, reason, message, error }) => ({ kind, outcome, reason, message, error }));

/** Best-of-`reps` GFLOP/s of an n×n matMul on each backend, taking turns so load changes hit all alike. */
async function measureMatMul() {
  const size = Number(values.size);
  const report = await cudaBackend.useBestBackend({ threads });
  const doctorText = cudaBackend.formatBackendReport(report);
  // The default backend, then single-threaded WASM, multi-threaded WASM and plain JS beside it.
  const entries = [{ name: report.backend, kind: report.kind, backend: report.backend, threads: report.threads }];
  const cores = report.availableCores;
  if (report.kind !== 'wasm-threads' && report.kind !== 'wasm' && cores > 1 && (threads ?? cores) > 1) {
    const started = await cudaBackend.startWasmBackend({ name: 'wasm', threads: threads ?? cores }).catch((error) => {
      console.error(`multi-threaded WASM could not start: ${error.message}`);
      return null;
    });
    if (started) entries.push({ name: 'wasm', kind: 'wasm-threads', backend: 'wasm', threads: started.threads });
  }
  if (report.kind !== 'wasm') {
    const single = await cudaBackend.startWasmBackend({ name: 'wasm-single', threads: 1 });
    entries.push({ name: 'wasm-single', kind: 'wasm', backend: 'wasm', threads: single.threads });
  }
  entries.push({ name: 'cpu', kind: 'cpu', backend: 'cpu', threads: 1 });

  const flops = 2 * size ** 3;
  const operands = new Map();
  for (const entry of entries) {
    await tf.setBackend(entry.name);
    const a = tf.randomNormal([size, size], 0, 1, 'float32', 1);
    const b = tf.randomNormal([size, size], 0, 1, 'float32', 2);
    tf.matMul(a, b).dispose(); // warm-up: first-call allocations, XNNPACK weight packing
    operands.set(entry.name, [a, b]);
    entry.bestMs = Number.POSITIVE_INFINITY;
  }
  const reps = Number(values.reps);
  for (let rep = 0; rep < reps; rep++) {
    for (const entry of entries) {
      // The plain JS backend takes seconds per product: two timings are enough to see its speed.
      if (entry.kind === 'cpu' && rep >= 2) continue;
      await tf.setBackend(entry.name);
      const [a, b] = operands.get(entry.name);
      const started = performance.now();
      const product = tf.matMul(a, b);
      product.dataSync();
      entry.bestMs = Math.min(entry.bestMs, performance.now() - started);
      product.dispose();
    }
  }
  const rows = entries.map((entry) => ({
    kind: 'matmul',
    backend: entry.backend,
    threads: entry.threads,
    size,
    gflops: Number((flops / entry.bestMs / 1e6).toFixed(2)),
    backendKind: entry.kind,
    isDefault: entry === entries[0],
  }));
  return { rows, doctor: doctorText, attempts: attemptsOf(report), default: { kind: report.kind, backend: report.backend, threads: report.threads } };
}

/** Step time of LoRA training, full fine-tuning and the forward pass on one backend. */
async function measureTraining() {
  const kind = values.backend;
  const report = await cudaBackend.useBestBackend({ prefer: kind, fallback: false, threads });
  const config = CONFIGS[values.config];
  const tokens = config.batchSize * config.seqLen;
  // JS CPU steps take many seconds and have nothing to warm up.
  const timedSteps = kind === 'cpu' ? 1 : Number(values.steps);
  const warmup = kind === 'cpu' ? 0 : 1;
  const rows = [];
  const row = (variant, stepMs) => ({
    kind: 'train',
    variant,
    config: values.config,
    backend: report.backend,
    threads: report.threads,
    stepMs: Number(stepMs.toFixed(1)),
    tokensPerSec: Number(((tokens * 1000) / stepMs).toFixed(1)),
    backendKind: report.kind,
  });

  for (const variant of values.variants.split(',')) {
    const times = [];
    await runVariant({
      variant,
      configName: values.config,
      steps: warmup + timedSteps,
      onStepEnd: (step, ms) => {
        if (step > warmup) times.push(ms);
      },
    });
    rows.push(row(variant, median(times)));
  }
  return { rows, attempts: attemptsOf(report) };
}

const command = positionals[0];
const result = command === 'matmul' ? await measureMatMul() : command === 'train' ? await measureTraining() : null;
if (result === null) {
  console.error('usage: throughput-child.mjs matmul|train [options]');
  process.exit(2);
}
process.stdout.write(`\n${JSON.stringify(result)}\n`);
