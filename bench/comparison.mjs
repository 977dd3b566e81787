// The comparison section of `pnpm bench`: every method of the variant guide on the same base model,
// data, steps and seeds; the guide's qualitative table beside the measured figures; its headline
// figures on BERT-base; scaling over three widths with SVG charts. See bench/README.md.
//
//   node bench/run.mjs --only comparison [--quick] [--json]
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { measureBertBase } from './comparison/bert.mjs';
import { loadClassificationData, loadLanguageData } from './comparison/data.mjs';
import { machineInfo, machineSlug } from './comparison/machine.mjs';
import { markdownReport } from './comparison/report.mjs';
import { comparisonRow, runClassification, runLanguageModelling } from './comparison/rows.mjs';
import { lineChartSvg, runScalingPoint } from './comparison/scaling.mjs';
import { configLabel, loadVariantPackages, VARIANTS } from './comparison/variants.mjs';
import { core, cudaBackend, tf } from './lib/packages.mjs';

/** The full run (sized to finish within 30 min on 2 cores shared with other work) and the tiny one (`--quick`, also the acceptance test's). */
export const SETTINGS = {
  full: {
    name: 'full',
    language: { steps: 30, batchSize: 4, contextLength: 32, validationTokens: 4096, inferenceReps: 3 },
    seeds: [0, 1, 2],
    classification: { length: 32, batchSize: 8, steps: 20, trainPerClass: 80, testPerClass: 100 },
    bertLayers: 12,
    scaling: { widths: [128, 256, 512], layers: 2, steps: 3, batchSize: 4, contextLength: 32 },
  },
  quick: {
    name: 'quick',
    language: { steps: 3, batchSize: 2, contextLength: 16, validationTokens: 256, inferenceReps: 1 },
    seeds: [0, 1, 2],
    classification: { length: 16, batchSize: 4, steps: 3, trainPerClass: 4, testPerClass: 4 },
    bertLayers: 2,
    scaling: { widths: [32, 64, 128], layers: 2, steps: 3, batchSize: 2, contextLength: 16 },
  },
};

/** Sections of the comparison; the acceptance test runs only `rows`. */
export const COMPARISON_PARTS = ['rows', 'classification', 'bert', 'scaling'];

function formatDuration(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  return seconds >= 60 ? `${Math.floor(seconds / 60)} min ${String(seconds % 60).padStart(2, '0')} s` : `${seconds} s`;
}

/** Progress on stderr: one line per finished unit of work, with an ETA from the work done so far. */
function progressTracker(totalWeight, log) {
  const started = performance.now();
  let done = 0;
  return (weight, text) => {
    done += weight;
    const elapsed = performance.now() - started;
    const eta = done >= totalWeight ? 0 : (elapsed / done) * (totalWeight - done);
    log(`comparison ${Math.round((100 * done) / totalWeight)}% | ${text} | elapsed ${formatDuration(elapsed)} | ETA ${formatDuration(eta)}`);
  };
}

/**
 * Run the comparison in this process on the active tfjs backend. Returns `{ rows, details }`:
 * `rows` are the JSON rows (one per method, then one per method and width of the scaling part);
 * `details` holds what the report shows beyond them (per-seed losses, merged-vs-unmerged output
 * difference, accuracies, BERT-base figures, scaling points, methods not built yet).
 *
 * @param {object} options
 * @param {boolean} [options.quick] the tiny configuration (default false)
 * @param {readonly string[]} [options.parts] which of COMPARISON_PARTS to run (default all)
 * @param {(text: string) => void} [options.log] progress lines (default stderr)
 */
export async function compare({ quick = false, parts = COMPARISON_PARTS, log = (text) => process.stderr.write(`${text}\n`) } = {}) {
  const settings = quick ? SETTINGS.quick : SETTINGS.full;
  const backend = tf.getBackend();
  const loaded = [];
  const missing = [];
  for (const definition of VARIANTS) {
    const result = await loadVariantPackages(definition);
    if (result.missing) {
      missing.push({ label: definition.label, variant: definition.variant, packageName: result.missing });
      log(`comparison: ${definition.label} — not built yet (${result.missing} is not installed); no row.`);
    } else loaded.push({ definition, modules: result.modules });
  }
  const widths = parts.includes('scaling') ? settings.scaling.widths : [];
  const weights = {
    seed: 1,
    classification: parts.includes('classification') ? 1 : 0,
    bert: parts.includes('bert') ? 4 : 0,
    scaling: widths.length,
  };
  const total =
    (parts.includes('rows') ? loaded.length * settings.seeds.length * weights.seed : 0) + loaded.length * (weights.classification + weights.scaling) + weights.bert;
  const progress = progressTracker(total, log);

  const rows = [];
  const details = { settings, backend, methods: [], missing, bert: null, scaling: [], classificationTask: null, languageData: null, heldOutCondition: null };
  const language = settings.language;
  const runLabel = `bundled base → State of the Union, ${language.steps} steps × ${language.batchSize} × ${language.contextLength} tokens, seeds ${settings.seeds.join('/')}`;

  if (parts.includes('rows')) {
    const data = await loadLanguageData(language);
    details.languageData = data.description;
    details.heldOutCondition = data.validation.find((entry) => entry.heldOut).label;
    for (const { definition, modules } of loaded) {
      const runs = [];
      for (const seed of settings.seeds) {
        const run = await runLanguageModelling({ definition, modules, settings: language, data, seed, measureAll: runs.length === 0 });
        runs.push(run);
        progress(weights.seed, `${definition.label} seed ${seed}: validation loss ${run.valLoss.toFixed(4)}`);
      }
      const row = comparisonRow({ definition, config: configLabel(definition, runLabel), backend, runs, tokensPerStep: language.batchSize * language.contextLength });
      rows.push(row);
      details.methods.push({
        label: definition.label,
        variant: definition.variant,
        note: definition.note,
        row,
        valLosses: runs.map((run) => run.valLoss),
        perplexities: runs.map((run) => run.perplexity),
        mergeMaxAbsDiff: runs[0].inference.mergeMaxAbsDiff,
        merges: definition.merges !== false,
        adapterBytes: runs[0].resident.adapters,
        accuracy: null,
      });
    }
  }

  if (parts.includes('classification')) {
    const data = await loadClassificationData(settings.classification);
    details.classificationTask = { task: data.task, train: data.train.length, test: data.test.length, steps: settings.classification.steps };
    for (const { definition, modules } of loaded) {
      const result = await runClassification({ definition, modules, settings: settings.classification, data, seed: 0 });
      const method = details.methods.find((entry) => entry.label === definition.label);
      if (method) method.accuracy = result.accuracy;
      else details.methods.push({ label: definition.label, variant: definition.variant, note: definition.note, row: null, accuracy: result.accuracy });
      progress(weights.classification, `${definition.label} classification: accuracy ${(100 * result.accuracy).toFixed(1)}% on ${result.testExamples}`);
    }
  }

  if (parts.includes('bert')) {
    details.bert = measureBertBase({ layers: settings.bertLayers, log });
    progress(weights.bert, `BERT-base shape (${settings.bertLayers} layers): parameter counts and 4-bit memory`);
  }

  if (parts.includes('scaling')) {
    const scaling = settings.scaling;
    const data = await loadLanguageData({ ...scaling, validationTokens: 0 });
    const batches = data.batchesFor(0);
    for (const { definition, modules } of loaded) {
      const points = [];
      for (const width of widths) {
        const point = await runScalingPoint({ definition, modules, width, settings: scaling, batches });
        points.push(point);
        rows.push({
          variant: definition.variant,
          config: configLabel(definition, `scaling: random-weight GPT-2 d ${width}, ${scaling.layers} layers, ${scaling.steps} steps × ${scaling.batchSize} × ${scaling.contextLength} State of the Union tokens`),
          backend,
          trainableParams: point.counts.trainable,
          totalParams: point.counts.total,
          adapterFileBytes: point.fileBytes,
          baseWeightBytes: point.baseBytes,
          peakBytes: point.peakBytes,
          optimizerStateBytes: point.optimizerStateBytes,
          stepMs: point.stepMs,
          tokensPerSec: point.stepMs === null ? null : (scaling.batchSize * scaling.contextLength * 1000) / point.stepMs,
          inferenceTokensPerSecUnmerged: null,
          inferenceTokensPerSecMerged: null,
          valLoss: null,
          valLossSpread: null,
          valLossByCondition: null,
          valLossHeldOut: null,
        });
        progress(1, `${definition.label} at d ${width}: ${point.stepMs?.toFixed(0)} ms/step`);
      }
      details.scaling.push({ label: definition.label, variant: definition.variant, points });
    }
  }
  return { rows, details };
}

/** The scaling charts as `{ file suffix: svg }`. */
export function scalingCharts(scaling) {
  const series = (field) => scaling.map((method) => ({ label: method.label, points: method.points.map((point) => ({ x: point.width, y: point[field] })) }));
  const mib = (bytes) => (bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(bytes >= 10 << 20 ? 0 : 1)} MiB` : `${(bytes / 1024).toFixed(0)} KiB`);
  return {
    'step-ms': lineChartSvg({ title: 'Training step time vs model width', yLabel: 'ms per step', series: series('stepMs'), format: (value) => `${value}` }),
    'peak-bytes': lineChartSvg({ title: 'Peak bytes during a training step vs model width', yLabel: 'peak bytes', series: series('peakBytes'), format: mib }),
    'adapter-bytes': lineChartSvg({ title: 'Saved adapter (full: checkpoint) bytes vs model width', yLabel: 'file bytes', series: series('fileBytes'), format: mib }),
  };
}

const RESULTS = fileURLToPath(new URL('./results/', import.meta.url));

/**
 * The `comparison` section of `pnpm bench`: selects the backend, runs {@link compare}, prints the
 * Markdown report and writes it (with the scaling charts) to `bench/results/<date>-<machine>[-quick].md`.
 */
export async function runComparison({ quick = false, threads, log = (text) => process.stderr.write(`${text}\n`), print = () => {} } = {}) {
  const report = await cudaBackend.useBestBackend({ threads });
  const start = machineInfo();
  const startedAt = new Date();
  const started = performance.now();
  const { rows, details } = await compare({ quick, log });
  const end = machineInfo();
  const stem = `${startedAt.toISOString().slice(0, 10)}-${machineSlug(start)}${quick ? '-quick' : ''}`;
  const charts = details.scaling.length > 0 ? scalingCharts(details.scaling) : {};
  const chartFiles = Object.fromEntries(Object.keys(charts).map((name) => [name, `${stem}-${name}.svg`]));
  const markdown = markdownReport({
    details,
    machine: { start, end, startedAt, seconds: (performance.now() - started) / 1000, backend: `${report.kind} (${report.backend}, ${report.threads} thread${report.threads === 1 ? '' : 's'})` },
    chartFiles,
  });
  await fs.mkdir(RESULTS, { recursive: true });
  for (const [name, svg] of Object.entries(charts)) await core.writeFileAtomic(path.join(RESULTS, chartFiles[name]), svg);
  await core.writeFileAtomic(path.join(RESULTS, `${stem}.md`), markdown);
  log(`comparison: report written to bench/results/${stem}.md`);
  print(markdown);
  return rows;
}
