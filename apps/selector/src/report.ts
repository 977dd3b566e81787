import asciichart from 'asciichart';

/** What a training run reports (written as report.json and summarised in report.md). */
export interface TrainingReport {
  /** The trained recipe's variant id (e.g. `lora`, `qlora`). */
  readonly variant: string;
  /** The recipe as trained. */
  readonly recipe: {
    /** Adapter plugin name in the registry. */
    readonly adapter: string;
    /** Base transform plugins applied before the adapter (`['quant']` for QLoRA). */
    readonly transforms: readonly string[];
    /** The trained adapter's config as PEFT JSON (snake_case keys, defaults filled in). */
    readonly config: Readonly<Record<string, unknown>>;
  };
  /** The model directory as given, or a description of the bundled base. */
  readonly model: string;
  /** The training data: the JSONL file with its record count, or the default corpus's description. */
  readonly data: string;
  /** The tensor backend's description, as passed in `TrainRunOptions.backend`. */
  readonly backend: string;
  /** Total optimizer steps of the run, counting those before a resume. */
  readonly steps: number;
  /** Windows per step. */
  readonly batchSize: number;
  /** Tokens per window. */
  readonly contextLength: number;
  /** PEFT's one-line count: `trainable params: … || all params: … || trainable%: …`. */
  readonly trainableParameters: string;
  /** Validation measured the same way before and after training (same tokens, windows and model, adapter included). */
  readonly before: {
    /** Mean negative log-likelihood per predicted token, in nats. */
    readonly validationLoss: number;
    /** exp(`validationLoss`). */
    readonly validationPerplexity: number;
    /** Number of validation tokens predicted. */
    readonly tokens: number;
  };
  /** Validation after training, measured exactly as `before`. */
  readonly after: {
    /** Mean negative log-likelihood per predicted token, in nats. */
    readonly validationLoss: number;
    /** exp(`validationLoss`). */
    readonly validationPerplexity: number;
    /** Number of validation tokens predicted. */
    readonly tokens: number;
  };
  /** Training loss of each step run by the process that finished the run. */
  readonly losses: readonly number[];
  /** The checkpoint step a resumed run continued from (0 when run in one go). */
  readonly resumedFromStep: number;
  /** Training throughput of the finishing process: (steps − `resumedFromStep`) × batch × context tokens over `seconds`. */
  readonly tokensPerSecond: number;
  /** Wall-clock seconds of the training loop in the finishing process (checkpoints included; evaluation and sampling not). */
  readonly seconds: number;
  /** Seeded samples from the same prompt before and after training, or null when none were taken. */
  readonly samples: {
    /** The prompt (`--prompt`). */
    readonly prompt: string;
    /** Continuation (up to 80 tokens, prompt excluded) sampled before training. */
    readonly before: string;
    /** Continuation sampled after training, with the same seed. */
    readonly after: string;
  } | null;
  /** The flowchart steps that chose the variant, as the report's "Why this variant" lists them. */
  readonly path: readonly {
    /** The question's text (not its id), e.g. `Are memory limitations extreme?`. */
    readonly question: string;
    /** The answer taken: true for yes. */
    readonly answer: boolean;
    /** Which source gave the answer (`flag`, `config`, `prompt`, `measurement` or `default`). */
    readonly source: string;
    /** The answer's human-readable reason. */
    readonly detail: string;
  }[];
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
