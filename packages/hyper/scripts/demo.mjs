// The @lora/hyper demo: State of the Union addresses conditioned on party × era, one combination
// held out. Compares, in one run and over 3 seeds: the base model, one HyperLoRA, one shared LoRA,
// one LoRA per condition, and (for the held-out combination) a LoRA trained on it alone.
//
//   pnpm --filter @lora/hyper build && node packages/hyper/scripts/demo.mjs [--steps 40] [--seeds 1,2,3] [--out results.json]
//
// Prints a markdown table (the one in the README) and writes the raw numbers as JSON.
import * as tf from '@tensorflow/tfjs-core';
import { writeFile } from 'node:fs/promises';
import { AdamW, AdapterLayer, AdapterModel, causalLmLoss, createLoraRegistry, initRuntime, lora } from '@lora/core';
import { loadBundledBase } from '@lora/models';
import { HyperLoraAdapter, HyperLoraState, parseHyperLoraConfig } from '../dist/index.js';
import { ALL, batches as conditionBatches, CONDITION_SPEC, CONDITIONS, dataOf, HELD_OUT, label, loadData as loadConditionedData, option, SETTINGS, validationLoss } from './sotu.mjs';

const STEPS = Number(option('steps', '40'));
const SEEDS = option('seeds', '1,2,3').split(',').map(Number);
const OUT = option('out', null);
const { context: CONTEXT, batch: BATCH, learningRate: LEARNING_RATE, validationWindows: VALIDATION_WINDOWS } = SETTINGS;
const TARGETS = ['c_attn'];
const RANK = 8;

/** Train `variables` for STEPS AdamW steps on batches from `nextBatch`; returns the median step time in ms. */
function trainLoop({ variables, forward, nextBatch, hooks, model }) {
  const optimizer = new AdamW({ learningRate: LEARNING_RATE });
  const times = [];
  model.train();
  for (let step = 1; step <= STEPS; step++) {
    const { rows, conditions } = nextBatch(step);
    const started = performance.now();
    const { value, grads } = tf.variableGrads(() => {
      const ids = tf.tensor2d(rows, [rows.length, CONTEXT], 'int32');
      return causalLmLoss(forward(ids, conditions, rows.length), ids);
    }, variables);
    const loss = value.dataSync()[0];
    if (!Number.isFinite(loss)) throw new Error(`non-finite loss at step ${step}`);
    const gradients = new Map(variables.map((variable) => [variable, grads[variable.name]]));
    optimizer.applyGradients(gradients);
    for (const hook of hooks) hook.afterStep?.({ step, gradients });
    tf.dispose([value, ...Object.values(grads)]);
    times.push(performance.now() - started);
  }
  optimizer.dispose();
  model.eval();
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)];
}

async function withLora(seed, data, conditions) {
  const { model } = await loadBundledBase();
  const registry = createLoraRegistry({ plugins: [lora({ seed })] });
  const peft = AdapterModel.create(model, { registry, config: { r: RANK, loraAlpha: 2 * RANK, targetModules: TARGETS } });
  const variables = model.namedParameters().filter(([, variable]) => variable.trainable).map(([, variable]) => variable);
  const forward = (ids) => model.forward(ids);
  const stepMs = trainLoop({ variables, forward, nextBatch: conditionBatches(data, conditions, seed, BATCH), hooks: [], model });
  return { peft, model, forward, stepMs, parameters: peft.trainableParameters().trainable };
}

/** A HyperLoRA on the bundled base's c_attn layers, wired from the package's public classes. */
async function withHyper(seed, data) {
  const { model } = await loadBundledBase();
  model.setTrainable(false);
  const config = parseHyperLoraConfig({
    r: RANK,
    loraAlpha: 2 * RANK,
    targetModules: TARGETS,
    condition: CONDITION_SPEC,
    conditionDropout: 0.1,
  });
  const targets = model.namedModules().filter(([path]) => TARGETS.some((name) => path.endsWith(`.${name}`)));
  const state = new HyperLoraState({ adapterName: 'default', config, targets, seed });
  for (const [path, base] of targets) {
    const layer = new AdapterLayer(base);
    layer.addAdapter('default', new HyperLoraAdapter({ state, modulePath: path }));
    layer.setActiveAdapters(['default']);
    model.setSubmodule(path, layer);
  }
  const variables = state.namedTensors().map(([, variable]) => variable);
  const forward = (ids, condition) => {
    state.beginForward({ inputs: { condition }, training: model.training });
    try {
      return model.forward(ids);
    } finally {
      state.endForward();
    }
  };
  const stepMs = trainLoop({ variables, forward, nextBatch: conditionBatches(data, CONDITIONS, seed, BATCH), hooks: [state.trainingHooks()], model });
  return {
    peft: { dispose: () => (state.dispose(), model.dispose()) },
    model,
    forward,
    stepMs,
    parameters: variables.reduce((sum, variable) => sum + variable.size, 0),
  };
}

await initRuntime();
const data = await loadConditionedData({ context: CONTEXT, validationWindows: VALIDATION_WINDOWS });
const results = { steps: STEPS, batch: BATCH, context: CONTEXT, learningRate: LEARNING_RATE, rank: RANK, seeds: SEEDS, heldOut: label(HELD_OUT), data: {}, runs: [] };
for (const condition of ALL) {
  const entry = dataOf(data, condition);
  results.data[label(condition)] = { speeches: entry.speeches, trainWindows: entry.train.length, validationWindows: entry.validation.length };
}
const { model: base } = await loadBundledBase();
base.eval();
const baseLoss = Object.fromEntries(ALL.map((condition) => [label(condition), validationLoss((ids) => base.forward(ids), dataOf(data, condition).validation)]));
base.dispose();
for (const seed of SEEDS) {
  const run = { seed, loss: {}, stepMs: {}, parameters: {} };
  const record = (method, condition, value) => {
    run.loss[method] ??= {};
    run.loss[method][label(condition)] = value;
  };
  const evaluateAll = (method, trained, conditions) => {
    for (const condition of conditions) record(method, condition, validationLoss(trained.forward, dataOf(data, condition).validation, condition));
  };
  const hyperRun = await withHyper(seed, data);
  evaluateAll('HyperLoRA', hyperRun, ALL);
  [run.stepMs.HyperLoRA, run.parameters.HyperLoRA] = [hyperRun.stepMs, hyperRun.parameters];
  hyperRun.peft.dispose();
  const shared = await withLora(seed, data, CONDITIONS);
  evaluateAll('shared LoRA', shared, ALL);
  [run.stepMs['shared LoRA'], run.parameters['shared LoRA']] = [shared.stepMs, shared.parameters];
  shared.peft.dispose();
  let perConditionParameters = 0;
  const perConditionTimes = [];
  for (const condition of CONDITIONS) {
    const own = await withLora(seed, data, [condition]);
    evaluateAll('LoRA per condition', own, [condition]);
    perConditionParameters += own.parameters;
    perConditionTimes.push(own.stepMs);
    own.peft.dispose();
  }
  [run.stepMs['LoRA per condition'], run.parameters['LoRA per condition']] = [perConditionTimes.sort((a, b) => a - b)[1], perConditionParameters];
  const ceiling = await withLora(seed, data, [HELD_OUT]);
  evaluateAll('LoRA on the held-out combination (ceiling)', ceiling, [HELD_OUT]);
  [run.stepMs['LoRA on the held-out combination (ceiling)'], run.parameters['LoRA on the held-out combination (ceiling)']] = [ceiling.stepMs, ceiling.parameters];
  ceiling.peft.dispose();
  results.runs.push(run);
  process.stderr.write(`seed ${seed} done\n`);
}
results.baseLoss = baseLoss;

const mean = (values) => values.reduce((a, b) => a + b, 0) / values.length;
const std = (values) => Math.sqrt(mean(values.map((v) => (v - mean(values)) ** 2)));
const cell = (values) => (values.length === 0 ? '—' : `${mean(values).toFixed(3)} ± ${std(values).toFixed(3)}`);
const methods = ['HyperLoRA', 'shared LoRA', 'LoRA per condition', 'LoRA on the held-out combination (ceiling)'];
const columns = ALL.map(label);
const lines = [
  `| method | ${columns.map((c) => (c === label(HELD_OUT) ? `${c} (held out)` : c)).join(' | ')} | trainable params | median step (ms) |`,
  `|---|${columns.map(() => '---:').join('|')}|---:|---:|`,
  `| base model | ${columns.map((c) => baseLoss[c].toFixed(3)).join(' | ')} | 0 | — |`,
];
for (const method of methods) {
  const values = columns.map((c) => results.runs.map((run) => run.loss[method]?.[c]).filter((v) => v !== undefined));
  lines.push(
    `| ${method} | ${values.map(cell).join(' | ')} | ${results.runs[0].parameters[method].toLocaleString('en-US')} | ${mean(results.runs.map((run) => run.stepMs[method])).toFixed(0)} |`,
  );
}
const table = lines.join('\n');
console.log(table);
if (OUT) await writeFile(OUT, `${JSON.stringify({ ...results, table }, null, 2)}\n`);
