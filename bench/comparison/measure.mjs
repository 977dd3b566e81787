// One row's measurements: build the method on a fresh copy of the base, train it with core's
// train(), and read every figure from the running model (parameter counts, tensor and typed-array
// buffers, a saved file, timings). Nothing here is computed from a formula; the acceptance test
// checks these figures against formulas independently.
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { memoryReport, measurePeakTensorBytes } from '@lora/quant';
import { core, tf } from '../lib/packages.mjs';

/** Median of a non-empty list. */
export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Mean and sample standard deviation (0 for one value). */
export function meanAndSpread(values) {
  const mean = values.reduce((sum, value) => sum + value, 0) / values.length;
  if (values.length < 2) return { mean, spread: 0 };
  const variance = values.reduce((sum, value) => sum + (value - mean) ** 2, 0) / (values.length - 1);
  return { mean, spread: Math.sqrt(variance) };
}

/**
 * Apply a row's recipe to `model` (in place) and return `{ adapterModel }` (null for full
 * fine-tuning, which unfreezes every parameter instead).
 */
export function applyMethod(model, definition, modules, { seed, context }) {
  if (definition.adapter === null) {
    model.setTrainable(true);
    return { adapterModel: null };
  }
  const registry = core.createLoraRegistry({ plugins: [core.lora({ seed }), ...definition.plugins(modules, seed)] });
  const adapterModel = core.AdapterModel.create(model, {
    registry,
    plugin: definition.adapter,
    config: definition.config(context),
    transforms: definition.transforms,
  });
  return { adapterModel };
}

/**
 * Run `fn` (forward passes) with `condition` (one, or one per batch row) as the per-forward input of
 * a conditioned method (HyperLoRA, `definition.conditioned`); every other method ignores it.
 */
export function withCondition(definition, adapterModel, condition, fn) {
  return definition.conditioned ? adapterModel.withAdapterInputs({ condition }, fn) : fn();
}

/** Trainable and total parameters as the model reports them (PEFT's count: 4-bit weights count once each). */
export function parameterCounts(model, adapterModel) {
  if (adapterModel) {
    const report = adapterModel.trainableParameters();
    return { trainable: report.trainable, total: report.total };
  }
  let trainable = 0;
  let total = 0;
  for (const [, variable] of model.namedParameters()) {
    total += variable.size;
    if (variable.trainable) trainable += variable.size;
  }
  return { trainable, total };
}

/**
 * Train for `steps` with AdamW (weight decay 0, cosine schedule, 5% warm-up) and the method's hooks.
 * Returns the median step time (the first step, which allocates optimizer state, is left out) and
 * the losses. The caller owns and disposes `optimizer`.
 */
export async function trainMethod({ model, adapterModel, lossFn, batches, steps, learningRate, optimizer, tokensPerBatch }) {
  const times = [];
  let last = performance.now();
  const result = await core.train({
    // An AdapterModel brings its adapters' hooks (AdaLoRA's allocation) and adapter-level variables itself.
    model: adapterModel ?? model,
    lossFn,
    trainData: batches,
    steps,
    learningRate,
    warmupSteps: Math.max(1, Math.round(steps * 0.05)),
    schedule: 'cosine',
    optimizer,
    tokensPerBatch,
    onProgress: (event) => {
      if (event.kind !== 'step') return;
      const now = performance.now();
      if (event.step > 1) times.push(now - last);
      last = now;
    },
  });
  const stepMs = times.length > 0 ? median(times) : null;
  return { stepMs, losses: result.losses };
}

/** Run `forward` `reps` times (after one warm-up); median milliseconds and the last output's values. */
export function timeForward(forward, reps) {
  tf.tidy(() => forward().dataSync());
  const times = [];
  let values = null;
  for (let rep = 0; rep < reps; rep++) {
    const started = performance.now();
    const output = forward();
    values = output.dataSync();
    times.push(performance.now() - started);
    output.dispose();
  }
  return { ms: median(times), values };
}

/** Largest |a − b| over two equally long arrays. */
export function maxAbsDifference(a, b) {
  if (a.length !== b.length) throw new Error(`Output lengths differ: ${a.length} vs ${b.length}.`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

/**
 * Inference speed unmerged and merged on one batch, and how far the merged outputs are from the
 * unmerged ones. A model without an adapter (full fine-tuning) is a plain dense model, which is what a
 * merged model computes: its speed is reported as merged, unmerged is null. A method that cannot
 * merge (`merges: false`, HyperLoRA: one ΔW per condition) gets null merged figures, and its refusal
 * is checked: a merge that went through would be a bug, reported as an error.
 */
export function measureInference({ model, adapterModel, forward, tokens, reps, merges = true }) {
  model.eval();
  const unmerged = timeForward(forward, reps);
  if (!adapterModel) return { unmergedTokensPerSec: null, mergedTokensPerSec: (tokens * 1000) / unmerged.ms, mergeMaxAbsDiff: null };
  if (!merges) {
    let refused = false;
    try {
      adapterModel.merge();
    } catch (error) {
      if (!(error instanceof core.LoraError)) throw error;
      refused = true;
    }
    if (!refused) throw new Error('A method declared unmergeable merged; its merged figures would be missing for no reason.');
    return { unmergedTokensPerSec: (tokens * 1000) / unmerged.ms, mergedTokensPerSec: null, mergeMaxAbsDiff: null };
  }
  adapterModel.merge();
  let merged;
  try {
    merged = timeForward(forward, reps);
  } finally {
    adapterModel.unmerge();
  }
  return {
    unmergedTokensPerSec: (tokens * 1000) / unmerged.ms,
    mergedTokensPerSec: (tokens * 1000) / merged.ms,
    mergeMaxAbsDiff: maxAbsDifference(unmerged.values, merged.values),
  };
}

/**
 * Bytes held by the model: `base` = the frozen base (float32 tensors, or packed 4-bit codes +
 * quantization state + code tables), plus adapter and optimizer bytes, from `@lora/quant`'s
 * `memoryReport` (it reads the actual buffers). `outsideTensors` = what lives in typed arrays, not
 * tfjs tensors (the 4-bit codes), for adding to tfjs's own peak count.
 */
export function residentBytes(model, optimizer) {
  const report = memoryReport(model, { optimizer });
  return {
    base: report.packedWeights + report.quantState + report.quantTables + report.otherParameters,
    adapters: report.adapters,
    optimizerState: report.optimizerState,
    outsideTensors: report.packedWeights + report.quantState + report.quantTables,
  };
}

/** Total size of the files under `directory`. */
async function directoryBytes(directory) {
  let total = 0;
  for (const entry of await fs.readdir(directory, { withFileTypes: true })) {
    const file = path.join(directory, entry.name);
    total += entry.isDirectory() ? await directoryBytes(file) : (await fs.stat(file)).size;
  }
  return total;
}

/**
 * Bytes written by `save(directory)` into a fresh temporary directory, which is removed afterwards
 * (it is ours: created here by mkdtemp).
 */
export async function savedBytes(save) {
  const directory = await fs.mkdtemp(path.join(os.tmpdir(), 'lora-bench-'));
  try {
    await save(directory);
    return await directoryBytes(directory);
  } finally {
    await fs.rm(directory, { recursive: true, force: true });
  }
}

/**
 * Peak bytes of one real training step (core's train(), one step, the same optimizer and hooks):
 * tfjs's peak tensor bytes (variables, optimizer state and every intermediate) plus the bytes the
 * model keeps outside tfjs tensors. Run last: the step changes the weights.
 */
export async function measureStepPeak({ model, adapterModel, lossFn, batch, optimizer, outsideTensors }) {
  const peak = await measurePeakTensorBytes(() =>
    core.train({ model: adapterModel ?? model, lossFn, trainData: [batch], steps: 1, learningRate: 1e-5, optimizer }),
  );
  return peak.peakBytes + outsideTensors;
}
