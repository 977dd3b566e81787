// The comparison's Markdown report: header (date, machine, backend, load), the measured table,
// the variant guide's qualitative table beside the measured figures with an agrees/disagrees line,
// the guide's headline figures on BERT-base, and the scaling table with its charts.

const GIB = 1024 ** 3;

/** Bytes in B / KiB / MiB. */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return '—';
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(2)} MiB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)} KiB`;
  return `${bytes} B`;
}

const integer = (value) => (value === null || value === undefined ? '—' : Math.round(value).toLocaleString('en-US'));
const ratio = (value, reference) => (value === null || reference === null || reference === undefined || reference === 0 ? '—' : `${(value / reference).toFixed(2)}×`);

function markdownTable(headers, rows) {
  return [`| ${headers.join(' | ')} |`, `| ${headers.map(() => '---').join(' | ')} |`, ...rows.map((row) => `| ${row.join(' | ')} |`)].join('\n');
}

/**
 * The guide's "Comparison of LoRA Variants" rows that a measurement can answer, each with the
 * measured field, whether lower or higher is better, and the guide's word per column on a scale
 * where a larger number means better. The guide's "DoRA" is its double low-rank update; our
 * weight-decomposed DoRA is judged against the same word.
 */
export const GUIDE_ROWS = [
  {
    feature: 'Parameter efficiency',
    measured: 'trainable parameters',
    field: 'trainableParams',
    better: 'lower',
    words: { lora: 'Good', 'double-lora': 'Moderate', dora: 'Moderate', qlora: 'Very High', adalora: 'High', hyperlora: 'Moderate' },
    scale: { Moderate: 2, Good: 3, High: 4, 'Very High': 5 },
  },
  {
    feature: 'Memory usage',
    measured: 'peak bytes of a training step',
    field: 'peakBytes',
    better: 'lower',
    words: { lora: 'Low', 'double-lora': 'Moderate', dora: 'Moderate', qlora: 'Very Low', adalora: 'Low', hyperlora: 'Moderate' },
    scale: { High: 2, Moderate: 3, Low: 4, 'Very Low': 5 },
  },
  {
    feature: 'Computational overhead',
    measured: 'training step time',
    field: 'stepMs',
    better: 'lower',
    words: { lora: 'Low', 'double-lora': 'Moderate', dora: 'Moderate', qlora: 'Low', adalora: 'Moderate', hyperlora: 'High' },
    scale: { High: 2, Moderate: 3, Low: 4 },
  },
  {
    feature: 'Fine-tuning speed',
    measured: 'training tokens/s (the step time above, inverted)',
    field: 'tokensPerSec',
    better: 'higher',
    words: { lora: 'Fast', 'double-lora': 'Moderate', dora: 'Moderate', qlora: 'Very Fast', adalora: 'Moderate', hyperlora: 'Slow' },
    scale: { Slow: 2, Moderate: 3, Fast: 4, 'Very Fast': 5 },
  },
  {
    feature: 'Inference speed',
    measured: 'inference tokens/s with the adapter unmerged (merged in brackets)',
    field: 'inferenceTokensPerSecUnmerged',
    better: 'higher',
    words: { lora: 'Fast', 'double-lora': 'Moderate', dora: 'Moderate', qlora: 'Fast', adalora: 'Fast', hyperlora: 'Moderate' },
    scale: { Slow: 2, Moderate: 3, Fast: 4 },
  },
];

/** Within this factor of LoRA's figure a measurement counts as "the same as LoRA". */
export const SAME_AS_LORA = 0.1;

/**
 * Does a measured figure agree with the guide's word? Both are compared with LoRA's: the guide's
 * word is better, the same or worse than its word for LoRA; the measurement is better or worse by
 * more than {@link SAME_AS_LORA}, or the same.
 */
export function guideVerdict(guideRow, variant, value, loraValue) {
  const word = guideRow.words[variant];
  const guideSign = Math.sign(guideRow.scale[word] - guideRow.scale[guideRow.words.lora]);
  const relative = value / loraValue;
  const improvement = guideRow.better === 'lower' ? 1 / relative : relative;
  const measuredSign = improvement > 1 + SAME_AS_LORA ? 1 : improvement < 1 / (1 + SAME_AS_LORA) ? -1 : 0;
  const say = (sign) => (sign > 0 ? 'better than LoRA' : sign < 0 ? 'worse than LoRA' : 'same as LoRA');
  return { agrees: guideSign === measuredSign, text: `${guideSign === measuredSign ? 'agrees' : 'disagrees'} (guide: ${say(guideSign)}; measured: ${say(measuredSign)}, ${relative.toFixed(2)}× LoRA's figure)` };
}

function fieldText(field, value) {
  if (value === null || value === undefined) return '—';
  if (field === 'peakBytes') return formatBytes(value);
  if (field === 'stepMs') return `${value.toFixed(0)} ms`;
  if (field === 'tokensPerSec' || field.startsWith('inference')) return `${integer(value)} tok/s`;
  return integer(value);
}

/** The guide-vs-measured section: for each feature, one line per method. */
export function guideSection(methods) {
  const lora = methods.find((method) => method.variant === 'lora' && method.row);
  if (!lora) return '(LoRA did not run, so nothing can be compared with the guide.)';
  const lines = [];
  for (const guideRow of GUIDE_ROWS) {
    const rows = [];
    for (const method of methods) {
      if (!method.row || !(method.variant in guideRow.words) || method.label === 'AdaLoRA + growth') continue;
      const value = method.row[guideRow.field];
      const merged = guideRow.field === 'inferenceTokensPerSecUnmerged' ? ` (merged ${fieldText('tokensPerSec', method.row.inferenceTokensPerSecMerged)})` : '';
      const verdict = method.variant === 'lora' ? 'the reference' : guideVerdict(guideRow, method.variant, value, lora.row[guideRow.field]).text;
      rows.push([method.label, guideRow.words[method.variant], `${fieldText(guideRow.field, value)}${merged}`, verdict]);
    }
    lines.push(`**${guideRow.feature}** — measured: ${guideRow.measured}`, '', markdownTable(['method', "guide's word", 'measured', 'guide vs measurement'], rows), '');
  }
  const hyper = methods.find((method) => method.variant === 'hyperlora' && method.row);
  const shared = lora.row;
  lines.push(
    hyper
      ? "**Multi-task performance** (guide: LoRA Limited, DoRA Good, QLoRA Limited, AdaLoRA Good, HyperLoRA Excellent) — measured: validation loss per party × era condition, one combination held out of training (table below). " +
          `HyperLoRA, given each condition, ${hyper.row.valLossHeldOut.toFixed(3)} on the held-out combination and ${hyper.row.valLoss.toFixed(3)} overall, against one shared LoRA's ${shared.valLossHeldOut.toFixed(3)} and ${shared.valLoss.toFixed(3)}: ` +
          `${hyper.row.valLoss < shared.valLoss ? 'HyperLoRA is lower overall' : 'HyperLoRA is not lower overall'}, and ${hyper.row.valLossHeldOut < shared.valLossHeldOut ? 'lower' : 'not lower'} on the unseen combination. ` +
          "One run of this size is not a verdict on the guide's word; @lora/hyper's README has the 3-seed demo with a LoRA per condition."
      : "**Multi-task performance** (guide: LoRA Limited, DoRA Good, QLoRA Limited, AdaLoRA Good, HyperLoRA Excellent) — not answered here: HyperLoRA (`@lora/hyper`) is not installed, and the other methods are single-task.",
  );
  return lines.join('\n');
}

function headerSection({ machine, details }) {
  const { start, end, startedAt, seconds, backend } = machine;
  return [
    `# LoRA variants compared, measured (${details.settings.name} run)`,
    '',
    `- Date: ${startedAt.toISOString()} (took ${Math.round(seconds)} s)`,
    `- Machine: ${start.cpu}, ${start.cores} cores, ${(start.memoryBytes / GIB).toFixed(1)} GiB memory, ${start.platform}, Node ${start.node}`,
    `- Backend: ${backend}`,
    `- Load average (1/5/15 min): ${start.load.join(' / ')} at start, ${end.load.join(' / ')} at end${Math.max(start.load[0], end.load[0]) > start.cores ? ' — the machine was busy with other work: read times as ratios within this run' : ''}`,
    '- Generated by `node bench/run.mjs --only comparison' + (details.settings.name === 'quick' ? ' --quick' : '') + '`; nothing in it is typed in.',
  ].join('\n');
}

function mainTable(details) {
  const language = details.settings.language;
  const lora = details.methods.find((method) => method.variant === 'lora' && method.row)?.row ?? null;
  const rows = details.methods
    .filter((method) => method.row)
    .map(({ label, row, perplexities, accuracy }) => [
      label,
      `${integer(row.trainableParams)} (${((100 * row.trainableParams) / row.totalParams).toFixed(2)}%)`,
      formatBytes(row.adapterFileBytes),
      formatBytes(row.baseWeightBytes),
      `${formatBytes(row.peakBytes)} (${ratio(row.peakBytes, lora?.peakBytes)})`,
      formatBytes(row.optimizerStateBytes),
      `${row.stepMs === null ? '—' : row.stepMs.toFixed(0)} (${ratio(row.stepMs, lora?.stepMs)})`,
      integer(row.tokensPerSec),
      integer(row.inferenceTokensPerSecUnmerged),
      integer(row.inferenceTokensPerSecMerged),
      `${row.valLoss.toFixed(4)} ± ${row.valLossSpread.toFixed(4)}`,
      (perplexities.reduce((sum, value) => sum + value, 0) / perplexities.length).toFixed(3),
      accuracy === null || accuracy === undefined ? '—' : `${(100 * accuracy).toFixed(1)}%`,
    ]);
  const mergeText = (method) => (method.mergeMaxAbsDiff !== null ? method.mergeMaxAbsDiff.toExponential(1) : method.merges === false ? '— (merge refuses: one ΔW per condition)' : '— (no adapter)');
  const notes = details.methods.filter((method) => method.row).map((method) => `${method.label}: ${method.note}; merged − unmerged logits max |Δ| ${mergeText(method)}`);
  const missing = details.missing.map((entry) => `- **${entry.label}**: not built yet (\`${entry.packageName}\` is not installed); no figures.`);
  const task = details.classificationTask;
  return [
    '## The comparison',
    '',
    `Task: ${details.languageData}. Every method starts from the bundled base (byte-level GPT-2, 4 layers, d 256, pretrained on Moby-Dick), trains ${language.steps} steps of ${language.batchSize} × ${language.contextLength} tokens with AdamW (cosine schedule, learning rate 2e-3; full fine-tuning 5e-4), adapters on \`attn.c_attn\` and \`attn.c_proj\` of every block; validation loss is the mean ± sample standard deviation over seeds ${details.settings.seeds.join(', ')} (adapter initialisation and data order). Times and memory are from seed ${details.settings.seeds[0]}; ratios (×) are to LoRA in this run.`,
    '',
    markdownTable(
      ['method', 'trainable (% of total)', 'adapter file', 'base weights resident', 'peak bytes of a step (× LoRA)', 'optimizer state', 'step ms (× LoRA)', 'train tok/s', 'inference tok/s unmerged', 'inference tok/s merged', 'validation loss ± spread', 'perplexity', 'accuracy'],
      rows,
    ),
    '',
    ...missing,
    missing.length > 0 ? '' : null,
    task ? `Accuracy: ${task.task}; ${task.train} balanced training examples, ${task.test} balanced held-out test examples (chance = 50%), ${task.steps} steps, seed 0; a linear head on the mean hidden state, trained in every method (\`modules_to_save\`).` : null,
    '',
    'Columns: **adapter file** = bytes written by `saveAdapter` (full fine-tuning: the whole `savePretrained` checkpoint); **base weights resident** = the frozen base as held in memory (float32 tensors, or 4-bit codes + quantization state + code tables); **peak bytes** = tfjs\'s peak tensor bytes during one real training step (weights, optimizer state, activations, gradients) plus the 4-bit codes held outside tensors; **inference** = one forward pass of a batch, median; full fine-tuning has no adapter, so its dense model counts as merged.',
    '',
    ...notes.map((note) => `- ${note}`),
  ]
    .filter((line) => line !== null)
    .join('\n');
}

/** Validation loss per condition (mean over the seeds) for every language row, the held-out one marked. */
function conditionSection(details) {
  const methods = details.methods.filter((method) => method.row?.valLossByCondition);
  if (methods.length === 0) return null;
  const labels = Object.keys(methods[0].row.valLossByCondition);
  const heldOut = details.heldOutCondition;
  return [
    '## Validation loss per condition',
    '',
    `Party × era (before / from 1933) of the held-out speeches, mean over the seeds; **${heldOut}** was held out of every method's training. Only HyperLoRA is given the condition; the other methods see the same text without it.`,
    '',
    markdownTable(
      ['method', ...labels.map((label) => (label === heldOut ? `${label} (held out)` : label))],
      methods.map((method) => [method.label, ...labels.map((label) => method.row.valLossByCondition[label].toFixed(4))]),
    ),
  ].join('\n');
}

function bertSection(bert) {
  if (!bert) return null;
  const counting = bert.counting.map((entry) => [entry.label, integer(entry.trainable), integer(entry.total), `${entry.percent.toFixed(4)}%`]);
  const quantization = bert.quantization.map((entry) => [
    entry.doubleQuant ? 'NF4 + double quantization' : 'NF4',
    entry.layers,
    formatBytes(entry.float32Bytes),
    formatBytes(entry.quantizedBytes),
    `${(100 * entry.reduction).toFixed(2)}%`,
    entry.bitsPerParameter.toFixed(3),
  ]);
  return [
    "## The guide's headline figures on BERT-base",
    '',
    `BERT-base shape (${bert.layers === 12 ? '12 layers' : `${bert.layers} of BERT-base's 12 layers (quick run)`}, d 768, vocabulary 30522, 2-label classifier), random weights. The guide's sentiment example cites "109 million → about 5,000 trainable":`,
    '',
    markdownTable(['LoRA setting', 'trainable', 'total', 'trainable %'], counting),
    '',
    "QLoRA's memory reduction of the linear weights (the guide: 87.50%, which is 4 bits against 32 with nothing else stored), measured from the packed buffers:",
    '',
    markdownTable(['quantization', 'linear layers', 'float32', '4-bit + state + tables', 'reduction', 'bits per weight'], quantization),
  ].join('\n');
}

function scalingSection(details, chartFiles) {
  if (details.scaling.length === 0) return null;
  const scaling = details.settings.scaling;
  const widths = scaling.widths;
  const lora = details.scaling.find((method) => method.variant === 'lora');
  const cell = (method, width, field, format) => {
    const point = method.points.find((entry) => entry.width === width);
    const reference = lora?.points.find((entry) => entry.width === width)?.[field];
    return point ? `${format(point[field])} (${ratio(point[field], reference)})` : '—';
  };
  const table = (field, format) =>
    markdownTable(
      ['method', ...widths.map((width) => `d ${width}`)],
      details.scaling.map((method) => [method.label, ...widths.map((width) => cell(method, width, field, format))]),
    );
  const charts = Object.entries(chartFiles).map(([name, file]) => `![${name}](${file})`);
  return [
    '## Scaling with model width',
    '',
    `GPT-2 shape with random weights, ${scaling.layers} layers, widths ${widths.join(' / ')}, ${scaling.steps} steps of ${scaling.batchSize} × ${scaling.contextLength} State of the Union tokens; median step after the first; (×) = ratio to LoRA at the same width.`,
    '',
    '**Step time (ms)**',
    '',
    table('stepMs', (value) => (value === null ? '—' : value.toFixed(0))),
    '',
    '**Peak bytes of a step**',
    '',
    table('peakBytes', formatBytes),
    '',
    '**Adapter file (full fine-tuning: checkpoint)**',
    '',
    table('fileBytes', formatBytes),
    '',
    ...charts,
  ].join('\n');
}

/** The whole report. */
export function markdownReport({ details, machine, chartFiles = {} }) {
  return [
    headerSection({ machine, details }),
    details.methods.some((method) => method.row) ? mainTable(details) : null,
    details.methods.some((method) => method.row) ? `## The variant guide's table beside the measurements\n\nEach of the guide's words is compared with its word for LoRA, and each measurement with LoRA's (within ±${100 * SAME_AS_LORA}% counts as the same). AdaLoRA is judged on the published method (no growth).\n\n${guideSection(details.methods)}` : null,
    conditionSection(details),
    bertSection(details.bert),
    scalingSection(details, chartFiles),
  ]
    .filter((section) => section !== null)
    .join('\n\n');
}
