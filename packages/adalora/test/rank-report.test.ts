import { describe, expect, it } from 'vitest';
import { formatRankTable, renderRankChart, renderRankSvg, type RankHistory } from '../src/index.js';

function history(): RankHistory {
  const ranks = [
    [6, 6],
    [6, 6],
    [5, 4],
    [3, 4],
    [1, 3],
    [1, 3],
  ];
  const budgets = [12, 12, 9, 7, 4, 4];
  return {
    modules: ['h.0.attn<c>', 'h.1.mlp'],
    initR: 6,
    targetR: 2,
    initialBudget: 12,
    targetBudget: 4,
    entries: ranks.map(([a, b], step) => ({
      step,
      phase: step < 2 ? 'warmup' : step < 4 ? 'budgeting' : step === 4 ? 'final' : 'fixed',
      budget: budgets[step]!,
      masked: step >= 2,
      grown: (step === 3 ? { 'h.1.mlp': 1 } : {}) as Record<string, number>,
      ranks: { 'h.0.attn<c>': a!, 'h.1.mlp': b! },
      total: a! + b!,
    })),
  };
}

describe('formatRankTable', () => {
  it('lists each module per changed step with totals, budget, change and growth events', () => {
    const table = formatRankTable(history());
    const lines = table.split('\n');
    expect(lines[0]).toBe('AdaLoRA rank per module (initR 6 → targetR 2; budget 12 → 4)');
    expect(lines[1]!.split(/\s+/u)).toEqual(['module', 's0', 's2', 's3', 's4', 's5', 'Δ']);
    expect(lines.find((l) => l.startsWith('h.0.attn<c>'))!.split(/\s+/u)).toEqual(['h.0.attn<c>', '6', '5', '3', '1', '1', '-5']);
    expect(lines.find((l) => l.startsWith('total'))!.split(/\s+/u)).toEqual(['total', '12', '9', '7', '4', '4']);
    expect(lines.find((l) => l.startsWith('budget'))!.split(/\s+/u)).toEqual(['budget', '12', '9', '7', '4', '4']);
    expect(table).toContain('growth: s3 h.1.mlp+1');
    expect(formatRankTable(history(), { maxColumns: 3 }).split('\n')[1]!.split(/\s+/u)).toHaveLength(5);
  });
});

describe('renderRankChart', () => {
  it('draws one sparkline per module with first and last rank', () => {
    const chart = renderRankChart(history());
    expect(chart.split('\n')).toHaveLength(1 + 2 + 2);
    expect(chart).toMatch(/h\.0\.attn<c> +██▇▄▂▂ 6 → 1/u);
    expect(chart).toMatch(/budget +██▆▅▃▃ 12 → 4/u);
  });
});

describe('renderRankSvg', () => {
  it('writes a standalone SVG with a line per module, budget and total, names escaped', () => {
    const svg = renderRankSvg(history(), { title: 'ranks & budget' });
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    expect(svg.match(/<polyline /gu)).toHaveLength(4);
    expect(svg).toContain('h.0.attn&lt;c&gt; (1)');
    expect(svg).toContain('ranks &amp; budget');
    expect(svg).not.toContain('NaN');
  });
});
