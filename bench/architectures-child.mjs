// One architecture's LoRA steps in their own process (tfjs backends are per process):
//   node bench/architectures-child.mjs --architecture llama [--threads N] [--steps 6]
// Trains `steps` + 1 steps with core's train() (AdamW) on the default backend; the first warms up.
// Prints one JSON object on its last stdout line: the timed steps' times and the kernel calls of one step.
import { parseArgs } from 'node:util';
import { core, coreInternal, cudaBackend } from './lib/packages.mjs';
import { architectureRun } from './lib/architectures.mjs';

const { values } = parseArgs({ options: { architecture: { type: 'string' }, threads: { type: 'string' }, steps: { type: 'string', default: '6' } } });
const report = await cudaBackend.useBestBackend(values.threads === undefined ? {} : { threads: Number(values.threads) });
const run = architectureRun(values.architecture);
const steps = Number(values.steps) + 1;
const stepMs = [];
let kernelCalls = 0;
let spy = null;
let last = performance.now();
try {
  await core.train({
    model: run.model,
    trainData: [0],
    steps,
    learningRate: 1e-3,
    lossFn: run.lossFn,
    onProgress: (progress) => {
      if (progress.kind !== 'step') return;
      const ms = performance.now() - last;
      if (spy !== null) {
        spy.stop();
        kernelCalls = spy.calls.length;
        spy = null;
      }
      if (progress.step > 1) stepMs.push(ms);
      // Step 2's kernels are counted (step 1 may set up caches).
      if (progress.step === 1) spy = coreInternal.spyOnKernels(report.backend);
      last = performance.now();
    },
  });
} finally {
  run.dispose();
}
process.stdout.write(`\n${JSON.stringify({ architecture: values.architecture, backend: report.backend, backendKind: report.kind, threads: report.threads, stepMs, kernelCalls })}\n`);
