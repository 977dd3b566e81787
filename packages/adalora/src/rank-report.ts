import type { RankHistory, RankHistoryEntry } from './rank-allocator.js';

/** Options for {@link formatRankTable}. */
export interface RankTableOptions {
  /** At most this many step columns (default 12): the first and last step, then the steps where a rank or the budget changed, evenly thinned. */
  readonly maxColumns?: number;
}

/** Options for {@link renderRankChart}. */
export interface RankChartOptions {
  /** Characters per sparkline (default 48); the history is resampled to fit. */
  readonly width?: number;
}

/** Options for {@link renderRankSvg}. */
export interface RankSvgOptions {
  /** Image width in pixels (default 760). */
  readonly width?: number;
  /** Height of the per-module panel in pixels (default 300). */
  readonly height?: number;
  /** Chart title (default `AdaLoRA rank per module`). */
  readonly title?: string;
}

function pad(text: string, width: number, right = false): string {
  return right ? text.padStart(width) : text.padEnd(width);
}

function changed(previous: RankHistoryEntry, entry: RankHistoryEntry): boolean {
  return previous.budget !== entry.budget || Object.keys(entry.ranks).some((path) => entry.ranks[path] !== previous.ranks[path]);
}

function selectColumns(entries: readonly RankHistoryEntry[], maxColumns: number): RankHistoryEntry[] {
  if (entries.length <= 2) return [...entries];
  const first = entries[0]!;
  const last = entries[entries.length - 1]!;
  const middle = entries.slice(1, -1).filter((entry, i) => changed(entries[i]!, entry));
  const room = Math.max(0, maxColumns - 2);
  const picked =
    middle.length <= room ? middle : Array.from({ length: room }, (_, i) => middle[Math.round((i * (middle.length - 1)) / Math.max(1, room - 1))]!);
  return [first, ...new Set(picked), last];
}

/**
 * A plain-text table of each module's rank over training: one row per module, one column per
 * selected step, then the total, the scheduled budget and each module's change.
 *
 * @example
 * console.log(formatRankTable(adaLoraRankHistory(peft)!));
 */
export function formatRankTable(history: RankHistory, options: RankTableOptions = {}): string {
  const title = `AdaLoRA rank per module (initR ${history.initR} → targetR ${history.targetR}; budget ${history.initialBudget} → ${history.targetBudget})`;
  if (history.entries.length === 0) return `${title}\n(no allocator steps recorded)`;
  const columns = selectColumns(history.entries, Math.max(2, options.maxColumns ?? 12));
  const labels = ['module', ...history.modules, 'total', 'budget'];
  const nameWidth = Math.max(...labels.map((label) => label.length));
  const cellWidth = Math.max(4, ...columns.map((entry) => String(entry.step).length + 1));
  const header = [pad('module', nameWidth), ...columns.map((entry) => pad(`s${entry.step}`, cellWidth, true)), pad('Δ', 5, true)].join(' ');
  const lines = [title, header, '-'.repeat(header.length)];
  const initial = history.initR;
  for (const path of history.modules) {
    const final = history.entries[history.entries.length - 1]!.ranks[path] ?? 0;
    const delta = final - initial;
    lines.push(
      [pad(path, nameWidth), ...columns.map((entry) => pad(String(entry.ranks[path] ?? 0), cellWidth, true)), pad(delta > 0 ? `+${delta}` : String(delta), 5, true)].join(' '),
    );
  }
  lines.push('-'.repeat(header.length));
  lines.push([pad('total', nameWidth), ...columns.map((entry) => pad(String(entry.total), cellWidth, true))].join(' '));
  lines.push([pad('budget', nameWidth), ...columns.map((entry) => pad(String(entry.budget), cellWidth, true))].join(' '));
  const grown = history.entries.filter((entry) => Object.keys(entry.grown).length > 0);
  if (grown.length > 0) {
    lines.push(`growth: ${grown.map((entry) => `s${entry.step} ${Object.entries(entry.grown).map(([path, n]) => `${path}+${n}`).join(', ')}`).join('; ')}`);
  }
  return lines.join('\n');
}

const BLOCKS = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

function resample(entries: readonly RankHistoryEntry[], width: number): RankHistoryEntry[] {
  if (entries.length <= width) return [...entries];
  return Array.from({ length: width }, (_, i) => entries[Math.round((i * (entries.length - 1)) / (width - 1))]!);
}

function spark(values: readonly number[], max: number): string {
  return values.map((value) => (value <= 0 ? ' ' : BLOCKS[Math.min(BLOCKS.length - 1, Math.max(0, Math.ceil((value / Math.max(1, max)) * BLOCKS.length) - 1))]!)).join('');
}

/**
 * A terminal chart: one sparkline per module (rank over training, full height = initR; blank =
 * rank 0) with its first and last rank, then the total against the budget.
 *
 * @example
 * console.log(renderRankChart(adaLoraRankHistory(peft)!));
 */
export function renderRankChart(history: RankHistory, options: RankChartOptions = {}): string {
  if (history.entries.length === 0) return '(no allocator steps recorded)';
  const samples = resample(history.entries, Math.max(2, options.width ?? 48));
  const names = [...history.modules, 'total', 'budget'];
  const nameWidth = Math.max(...names.map((name) => name.length));
  const first = history.entries[0]!;
  const last = history.entries[history.entries.length - 1]!;
  const lines = [`rank per module, steps ${first.step}–${last.step} (full block = ${history.initR})`];
  for (const path of history.modules) {
    const values = samples.map((entry) => entry.ranks[path] ?? 0);
    lines.push(`${pad(path, nameWidth)} ${spark(values, history.initR)} ${first.ranks[path] ?? 0} → ${last.ranks[path] ?? 0}`);
  }
  const top = Math.max(history.initialBudget, ...history.entries.map((entry) => Math.max(entry.total, entry.budget)));
  lines.push(`${pad('total', nameWidth)} ${spark(samples.map((entry) => entry.total), top)} ${first.total} → ${last.total}`);
  lines.push(`${pad('budget', nameWidth)} ${spark(samples.map((entry) => entry.budget), top)} ${first.budget} → ${last.budget}`);
  return lines.join('\n');
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/gu, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];

/**
 * An SVG image (a string; write it to a `.svg` file) with two panels: each module's rank over
 * training as a step line, and the total rank against the scheduled budget. No dependencies.
 *
 * @example
 * await writeFile('ranks.svg', renderRankSvg(adaLoraRankHistory(peft)!));
 */
export function renderRankSvg(history: RankHistory, options: RankSvgOptions = {}): string {
  const width = options.width ?? 760;
  const panel = options.height ?? 300;
  const lower = Math.round(panel * 0.6);
  const legendWidth = 230;
  const margin = { left: 48, top: 36, right: 16 + legendWidth, bottom: 34 };
  const plotWidth = width - margin.left - margin.right;
  const height = margin.top + panel + margin.bottom + lower + margin.bottom;
  const entries = history.entries;
  const firstStep = entries[0]?.step ?? 0;
  const lastStep = entries[entries.length - 1]?.step ?? 1;
  const x = (step: number): number => margin.left + ((step - firstStep) / Math.max(1, lastStep - firstStep)) * plotWidth;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${margin.left}" y="20" font-size="14" font-weight="bold">${escapeXml(options.title ?? 'AdaLoRA rank per module')}</text>`,
  ];
  const axes = (top: number, h: number, max: number, label: string): ((value: number) => number) => {
    const y = (value: number): number => top + h - (value / Math.max(1, max)) * h;
    out.push(`<rect x="${margin.left}" y="${top}" width="${plotWidth}" height="${h}" fill="none" stroke="#999"/>`);
    const tickStep = Math.max(1, Math.ceil(max / 6));
    for (let value = 0; value <= max; value += tickStep) {
      out.push(`<line x1="${margin.left - 4}" x2="${margin.left + plotWidth}" y1="${y(value)}" y2="${y(value)}" stroke="#eee"/>`);
      out.push(`<text x="${margin.left - 6}" y="${y(value) + 4}" text-anchor="end">${value}</text>`);
    }
    out.push(`<text x="${margin.left + plotWidth / 2}" y="${top + h + 26}" text-anchor="middle">global step (${firstStep}–${lastStep})</text>`);
    out.push(`<text x="12" y="${top + h / 2}" transform="rotate(-90 12 ${top + h / 2})" text-anchor="middle">${escapeXml(label)}</text>`);
    return y;
  };
  const stepLine = (values: readonly number[], y: (value: number) => number, color: string, dash = ''): void => {
    if (entries.length === 0) return;
    const points: string[] = [];
    entries.forEach((entry, i) => {
      if (i > 0) points.push(`${x(entry.step).toFixed(1)},${y(values[i - 1]!).toFixed(1)}`);
      points.push(`${x(entry.step).toFixed(1)},${y(values[i]!).toFixed(1)}`);
    });
    out.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${dash ? ` stroke-dasharray="${dash}"` : ''} points="${points.join(' ')}"/>`);
  };
  const legend = (top: number, items: readonly [string, string][]): void => {
    items.forEach(([name, color], i) => {
      const y = top + 10 + i * 16;
      out.push(`<line x1="${width - legendWidth}" x2="${width - legendWidth + 18}" y1="${y}" y2="${y}" stroke="${color}" stroke-width="3"/>`);
      out.push(`<text x="${width - legendWidth + 24}" y="${y + 4}">${escapeXml(name)}</text>`);
    });
  };
  const topY = axes(margin.top, panel, history.initR, 'rank');
  history.modules.forEach((path, i) => stepLine(entries.map((entry) => entry.ranks[path] ?? 0), topY, PALETTE[i % PALETTE.length]!));
  legend(margin.top, history.modules.map((path, i) => [`${path} (${entries[entries.length - 1]?.ranks[path] ?? 0})`, PALETTE[i % PALETTE.length]!]));
  const lowerTop = margin.top + panel + margin.bottom;
  const budgetMax = Math.max(history.initialBudget, ...entries.map((entry) => Math.max(entry.total, entry.budget)));
  const lowerY = axes(lowerTop, lower, budgetMax, 'triplets');
  stepLine(entries.map((entry) => entry.budget), lowerY, '#555', '5 4');
  stepLine(entries.map((entry) => entry.total), lowerY, '#d62728');
  legend(lowerTop, [
    ['scheduled budget', '#555'],
    ['total rank', '#d62728'],
  ]);
  out.push('</svg>');
  return out.join('\n');
}
