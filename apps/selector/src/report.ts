import asciichart from 'asciichart';

/** What a training run reports (written as report.json and summarised in report.md). */
export interface TrainingReport {
  readonly variant: string;
  readonly recipe: { readonly adapter: string; readonly transforms: readonly string[]; readonly config: Readonly<Record<string, unknown>> };
  readonly model: string;
  readonly data: string;
  readonly backend: string;
  readonly steps: number;
  readonly batchSize: number;
  readonly contextLength: number;
  readonly trainableParameters: string;
  /** Validation measured the same way before and after training (same tokens, windows and model, adapter included). */
  readonly before: { readonly validationLoss: number; readonly validationPerplexity: number; readonly tokens: number };
  readonly after: { readonly validationLoss: number; readonly validationPerplexity: number; readonly tokens: number };
  /** Training loss of each step run by the process that finished the run. */
  readonly losses: readonly number[];
  /** The checkpoint step a resumed run continued from (0 when run in one go). */
  readonly resumedFromStep: number;
  readonly tokensPerSecond: number;
  readonly seconds: number;
  readonly samples: { readonly prompt: string; readonly before: string; readonly after: string } | null;
  readonly path: readonly { readonly question: string; readonly answer: boolean; readonly source: string; readonly detail: string }[];
}

/** Average `values` into at most `width` buckets so a chart fits a terminal. */
export function downsample(values: readonly number[], width: number): number[] {
  if (values.length <= width) return [...values];
  const out: number[] = [];
  for (let i = 0; i < width; i++) {
    const start = Math.floor((i * values.length) / width);
    const end = Math.max(start + 1, Math.floor(((i + 1) * values.length) / width));
    out.push(values.slice(start, end).reduce((a, b) => a + b, 0) / (end - start));
  }
  return out;
}

/** A text line chart of the training loss (asciichart), `height` rows tall. */
export function lossChart(losses: readonly number[], options: { width?: number; height?: number } = {}): string {
  if (losses.length === 0) return '(no steps)';
  return asciichart.plot(downsample(losses, options.width ?? 60), { height: options.height ?? 10, format: (x: number) => x.toFixed(3).padStart(8) });
}

/** The Markdown summary of a run: path, recipe, perplexity before/after, loss curve, samples. */
export function markdownReport(report: TrainingReport): string {
  const lines = [
    `# Fine-tuning report: ${report.variant}`,
    '',
    `- Model: \`${report.model}\``,
    `- Data: ${report.data}`,
    `- Backend: ${report.backend}`,
    `- Steps: ${report.steps} × batch ${report.batchSize} × ${report.contextLength} tokens (${report.seconds.toFixed(1)} s, ${Math.round(report.tokensPerSecond)} tokens/s)`,
    `- ${report.trainableParameters}`,
    '',
    '## Why this variant',
    '',
    ...report.path.map((step, i) => `${i + 1}. ${step.question} **${step.answer ? 'yes' : 'no'}** (${step.source}: ${step.detail})`),
    '',
    '## Validation',
    '',
    '| | loss | perplexity |',
    '| --- | --- | --- |',
    `| before | ${report.before.validationLoss.toFixed(4)} | ${report.before.validationPerplexity.toFixed(3)} |`,
    `| after | ${report.after.validationLoss.toFixed(4)} | ${report.after.validationPerplexity.toFixed(3)} |`,
    '',
    '## Training loss',
    '',
    '```',
    lossChart(report.losses),
    '```',
    '',
    '## Recipe',
    '',
    `Adapter \`${report.recipe.adapter}\`${report.recipe.transforms.length ? ` with base transforms ${report.recipe.transforms.map((t) => `\`${t}\``).join(', ')}` : ''}; PEFT config:`,
    '',
    '```json',
    JSON.stringify(report.recipe.config, null, 2),
    '```',
  ];
  if (report.samples) {
    lines.push('', '## Samples', '', `Prompt: \`${report.samples.prompt}\``, '', 'Before:', '', '```', report.samples.before, '```', '', 'After:', '', '```', report.samples.after, '```');
  }
  return `${lines.join('\n')}\n`;
}
