// HyperLoRA over the 4-bit base (`@lora/quant`, NF4 + double quantization) vs over the float32
// base: what the quant base transform saves and costs, measured in one run. Same data, seed,
// generator initialisation and batches for both; the runs alternate per seed so machine load hits both.
//
//   pnpm build && node packages/hyper/scripts/quant-base.mjs [--steps 30] [--seeds 1,2,3] [--out results.json]
//
// Prints a markdown table (the one in the README) and writes the raw numbers as JSON.
import * as tf from '@tensorflow/tfjs-core';
import { writeFile } from 'node:fs/promises';
import os from 'node:os';
import { AdamW, AdapterModel, causalLmLoss, createLoraRegistry, initRuntime, lora, train } from '@lora/core';
import { loadBundledBase } from '@lora/models';
import { measurePeakTensorBytes, memoryReport, quant } from '@lora/quant';
import { hyper } from '../dist/index.js';
import { ALL, batches, CONDITION_SPEC, CONDITIONS, dataOf, HELD_OUT, label, loadData, option, SETTINGS, validationLoss } from './sotu.mjs';

const STEPS = Number(option('steps', '30'));
const SEEDS = option('seeds', '1,2,3').split(',').map(Number);
const OUT = option('out', null);
const { context: CONTEXT, batch: BATCH, learningRate: LEARNING_RATE, validationWindows: VALIDATION_WINDOWS } = SETTINGS;
const BASES = ['float32', 'NF4 + double quant'];

/** The bundled base with a HyperLoRA on c_attn (the demo's settings), over the float32 or the 4-bit base. */
async function build(base, seed) {
  const { model } = await loadBundledBase();
  const plugins = [lora(), hyper({ seed })];
  if (base !== 'float32') plugins.push(quant({ type: 'nf4', doubleQuant: true }));
  const peft = AdapterModel.create(model, {
    registry: createLoraRegistry({ plugins }),
    plugin: 'hyper',
    config: { r: 8, loraAlpha: 16, targetModules: ['c_attn'], condition: CONDITION_SPEC, conditionDropout: 0.1 },
    transforms: base === 'float32' ? [] : ['quant'],
  });
  const forward = (ids, condition) => peft.withAdapterInputs({ condition }, () => model.forward(ids));
  return { model, peft, forward };
}

function lossesOf(forward) {
  return Object.fromEntries(ALL.map((condition) => [label(condition), validationLoss(forward, dataOf(data, condition).validation, condition)]));
}

async function run(base, seed) {
  const { model, peft, forward } = await build(base, seed);
  try {
    const report = memoryReport(model);
    model.eval();
    // At step 0 the adapted model is its base (exact start): this is the base's own loss.
    const before = lossesOf(forward);
    const nextBatch = batches(data, CONDITIONS, seed, BATCH);
    const trainData = Array.from({ length: STEPS }, (_, i) => nextBatch(i + 1));
    const lossFn = ({ rows, conditions }) =>
      tf.tidy(() => {
        const ids = tf.tensor2d(rows, [rows.length, CONTEXT], 'int32');
        return causalLmLoss(forward(ids, conditions), ids);
      });
    const optimizer = new AdamW({ learningRate: LEARNING_RATE });
    const times = [];
    let last = performance.now();
    try {
      model.train();
      await train({
        model: peft,
        lossFn,
        trainData,
        steps: STEPS,
        learningRate: LEARNING_RATE,
        optimizer,
        onProgress: (event) => {
          if (event.kind !== 'step') return;
          const now = performance.now();
          // The first step allocates the optimizer state; it is left out of the median.
          if (event.step > 1) times.push(now - last);
          last = now;
        },
      });
      model.eval();
      const after = lossesOf(forward);
      // One more real step for the peak: tfjs's peak tensor bytes plus the 4-bit codes held outside tensors.
      model.train();
      const peak = await measurePeakTensorBytes(() => train({ model: peft, lossFn, trainData: [trainData[0]], steps: 1, learningRate: 1e-5, optimizer }));
      times.sort((a, b) => a - b);
      return {
        base,
        seed,
        baseWeightBytes: report.packedWeights + report.quantState + report.quantTables + report.otherParameters,
        quantizedLayers: report.quantizedLayers,
        generatorParameters: peft.trainableParameters().trainable,
        medianStepMs: times[Math.floor(times.length / 2)],
        peakStepBytes: peak.peakBytes + report.packedWeights + report.quantState + report.quantTables,
        before,
        after,
      };
    } finally {
      optimizer.dispose();
    }
  } finally {
    peft.dispose();
  }
}

await initRuntime();
const data = await loadData({ context: CONTEXT, validationWindows: VALIDATION_WINDOWS });
const started = { date: new Date().toISOString(), load: os.loadavg().map((value) => Number(value.toFixed(2))) };
const runs = [];
for (const seed of SEEDS) {
  for (const base of BASES) {
    runs.push(await run(base, seed));
    process.stderr.write(`${base}, seed ${seed} done\n`);
  }
}
const machine = `${os.cpus()[0]?.model ?? 'unknown CPU'}, ${os.cpus().length} cores; load average ${started.load.join(' / ')} at start, ${os.loadavg().map((value) => value.toFixed(2)).join(' / ')} at end`;

const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;
const of = (base, pick) => mean(runs.filter((entry) => entry.base === base).map(pick));
const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(2)} MiB`;
const columns = ALL.map(label);
const lines = [
  `| base | base weights resident | peak bytes of a step | median step (ms) | trainable (generator) | ${columns.map((c) => (c === label(HELD_OUT) ? `${c} (held out)` : c)).join(' | ')} |`,
  `|---|---:|---:|---:|---:|${columns.map(() => '---:').join('|')}|`,
];
for (const base of BASES) {
  const cells = columns.map((c) => `${of(base, (entry) => entry.before[c]).toFixed(3)} → ${of(base, (entry) => entry.after[c]).toFixed(3)}`);
  lines.push(
    `| ${base} | ${mib(of(base, (entry) => entry.baseWeightBytes))} | ${mib(of(base, (entry) => entry.peakStepBytes))} | ${of(base, (entry) => entry.medianStepMs).toFixed(0)} | ${of(base, (entry) => entry.generatorParameters).toLocaleString('en-US')} | ${cells.join(' | ')} |`,
  );
}
const ratio = (pick) => (of(BASES[1], pick) / of(BASES[0], pick)).toFixed(2);
lines.push(
  '',
  `4-bit / float32: base weights ${ratio((entry) => entry.baseWeightBytes)}×, peak bytes of a step ${ratio((entry) => entry.peakStepBytes)}×, median step time ${ratio((entry) => entry.medianStepMs)}×.`,
);
const table = lines.join('\n');
console.log(table);
console.log(`\n${started.date}; ${machine}; ${STEPS} steps, seeds ${SEEDS.join(', ')}.`);
if (OUT) await writeFile(OUT, `${JSON.stringify({ started, machine, steps: STEPS, seeds: SEEDS, batch: BATCH, context: CONTEXT, learningRate: LEARNING_RATE, runs, table }, null, 2)}\n`);
