import { readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error -- plain ES modules of the private bench package (no declaration files)
import { compare } from '../comparison.mjs';
// @ts-expect-error -- as above
import { cudaBackend, models } from '../lib/packages.mjs';
// @ts-expect-error -- as above
import { guideVerdict, GUIDE_ROWS } from '../comparison/report.mjs';
// @ts-expect-error -- as above
import { lineChartSvg } from '../comparison/scaling.mjs';

type Row = Record<string, unknown> & { variant: string; trainableParams: number; totalParams: number };
type Method = { label: string; variant: string; row: Row; mergeMaxAbsDiff: number | null; merges: boolean; valLosses: number[] };

const FIELDS = [
  'variant',
  'config',
  'backend',
  'trainableParams',
  'totalParams',
  'adapterFileBytes',
  'baseWeightBytes',
  'peakBytes',
  'optimizerStateBytes',
  'stepMs',
  'tokensPerSec',
  'inferenceTokensPerSecUnmerged',
  'inferenceTokensPerSecMerged',
  'valLoss',
  'valLossSpread',
  'valLossByCondition',
  'valLossHeldOut',
];
/**
 * The documented nulls of a comparison row: full fine-tuning has no adapter to keep unmerged; a
 * HyperLoRA has one ΔW per condition and refuses to merge, so it has no merged speed.
 */
const NULL_FIELDS: Record<string, string[]> = { full: ['inferenceTokensPerSecUnmerged'], hyperlora: ['inferenceTokensPerSecMerged'] };
/** The language rows' conditions (party × era), the held-out one last. */
const CONDITIONS = ['party=Democratic,era=early', 'party=Democratic,era=modern', 'party=Republican,era=early', 'party=Republican,era=modern'];
const HELD_OUT = 'party=Republican,era=modern';

/** The bundled base's shape, read from its own config.json (not from the bench code). */
const baseConfig = JSON.parse(readFileSync(path.join(models.bundledBaseDirectory(), 'config.json'), 'utf8')) as {
  vocab_size: number;
  n_positions: number;
  n_embd: number;
  n_layer: number;
};

/** GPT2LMHeadModel's parameter count with a tied head, from its layer shapes. */
function gpt2ParameterCount({ vocab_size: vocab, n_positions: positions, n_embd: d, n_layer: layers }: typeof baseConfig): number {
  const block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d);
  return vocab * d + positions * d + layers * block + 2 * d;
}

/**
 * Trainable parameters of each method on `attn.c_attn` (d → 3d) and `attn.c_proj` (d → d) of every
 * block: LoRA r·(in + out); DoRA adds a magnitude per output; the double low-rank pairs 4 + 4 equal
 * r 8; AdaLoRA holds init_r (12) triplets: A, B and one singular value each.
 */
function expectedTrainable(variant: string): number {
  const { n_embd: d, n_layer: layers } = baseConfig;
  const modules = [
    { inFeatures: d, outFeatures: 3 * d },
    { inFeatures: d, outFeatures: d },
  ];
  const perLayer = (count: (m: { inFeatures: number; outFeatures: number }) => number) => modules.reduce((sum, m) => sum + count(m), 0) * layers;
  switch (variant) {
    case 'full':
      return gpt2ParameterCount(baseConfig);
    case 'lora':
    case 'qlora':
    case 'double-lora':
      return perLayer((m) => 8 * (m.inFeatures + m.outFeatures));
    case 'dora':
      return perLayer((m) => 8 * (m.inFeatures + m.outFeatures) + m.outFeatures);
    case 'adalora':
      return perLayer((m) => 12 * (m.inFeatures + m.outFeatures) + 12);
    case 'hyperlora': {
      // @lora/hyper's README formula, basis heads (K 8, r 8), trunk H 64 × k 2, layer and type
      // embeddings of 8, two factors (party, era) of 2 values + a null row, 16 wide each.
      const [H, K, r, k, dl, dt] = [64, 8, 8, 2, 8, 8];
      const condition = 2 * (2 + 1) * 16;
      const m = 2 * 16 + dl + dt;
      const positions = layers * dl + modules.length * dt;
      const trunk = 2 * m + (m * H + H) + (k - 1) * (H * H + H);
      const heads = modules.reduce((sum, t) => sum + (H + 1) * 2 * K + K * r * (t.inFeatures + t.outFeatures), 0);
      return condition + positions + trunk + heads;
    }
    default:
      throw new Error(`No formula for ${variant}.`);
  }
}

describe('compare (quick, language-modelling rows)', () => {
  let rows: Row[];
  let methods: Method[];
  let missing: { variant: string }[];

  beforeAll(async () => {
    await cudaBackend.useBestBackend({});
    const result = await compare({ quick: true, parts: ['rows'], log: () => {} });
    rows = result.rows;
    methods = result.details.methods;
    missing = result.details.missing;
  }, 900_000);

  it('gives one row per method with exactly the documented fields', () => {
    expect(missing).toEqual([]);
    expect(rows.map((row) => row.variant)).toEqual(['full', 'lora', 'dora', 'double-lora', 'qlora', 'adalora', 'adalora', 'hyperlora']);
    for (const row of rows) expect(Object.keys(row).sort()).toEqual([...FIELDS].sort());
  });

  it('fills every field with a measured number, or null only where documented', () => {
    for (const row of rows) {
      expect(typeof row['config']).toBe('string');
      expect(typeof row['backend']).toBe('string');
      for (const field of FIELDS.slice(3, -2)) {
        const value = row[field];
        if ((NULL_FIELDS[row.variant] ?? []).includes(field)) {
          expect(value, `${row.variant}.${field}`).toBeNull();
          continue;
        }
        expect(typeof value, `${row.variant}.${field}`).toBe('number');
        expect(Number.isFinite(value), `${row.variant}.${field}`).toBe(true);
        if (field === 'valLossSpread') expect(value).toBeGreaterThanOrEqual(0);
        else expect(value, `${row.variant}.${field}`).toBeGreaterThan(0);
      }
    }
  });

  it('gives every method a validation loss per condition, the held-out one included, consistent with its overall loss', () => {
    for (const row of rows) {
      const byCondition = row['valLossByCondition'] as Record<string, number>;
      expect(Object.keys(byCondition).sort(), row.variant).toEqual(CONDITIONS);
      for (const value of Object.values(byCondition)) expect(Number.isFinite(value) && value > 0, row.variant).toBe(true);
      expect(row['valLossHeldOut'] as number, row.variant).toBeCloseTo(byCondition[HELD_OUT]!, 12);
      // The overall loss is a token-weighted mean of the conditions' losses.
      const values = Object.values(byCondition);
      expect(row['valLoss'] as number, row.variant).toBeGreaterThanOrEqual(Math.min(...values) - 1e-12);
      expect(row['valLoss'] as number, row.variant).toBeLessThanOrEqual(Math.max(...values) + 1e-12);
    }
  });

  it('reports trainable parameters equal to each model’s own count, and totals that add up', () => {
    const full = rows.find((row) => row.variant === 'full')!;
    for (const row of rows) {
      expect(row.trainableParams, row.variant).toBe(expectedTrainable(row.variant));
      // Adapters add their parameters to the base's; the 4-bit base still counts its weights once each.
      expect(row.totalParams, row.variant).toBe(row.variant === 'full' ? full.trainableParams : full.totalParams + row.trainableParams);
    }
  });

  it('measures less resident base memory for QLoRA than for LoRA, and LoRA’s as its frozen float32 weights', () => {
    const lora = rows.find((row) => row.variant === 'lora')!;
    const qlora = rows.find((row) => row.variant === 'qlora')!;
    expect(qlora['baseWeightBytes']).toBeLessThan(lora['baseWeightBytes'] as number);
    expect(lora['baseWeightBytes']).toBe(4 * (lora.totalParams - lora.trainableParams));
  });

  it('measures AdamW state as two float32 moments per trainable parameter, and a peak above what is resident', () => {
    for (const row of rows) {
      expect(row['optimizerStateBytes'], row.variant).toBe(8 * row.trainableParams);
      const resident = (row['baseWeightBytes'] as number) + (row['optimizerStateBytes'] as number) + (row.variant === 'full' ? 0 : 4 * row.trainableParams);
      expect(row['peakBytes'] as number, row.variant).toBeGreaterThanOrEqual(resident);
    }
  });

  it('saves adapter files holding at least the float32 trainable tensors', () => {
    for (const row of rows.filter((entry) => ['lora', 'dora', 'double-lora', 'qlora', 'hyperlora'].includes(entry.variant))) {
      expect(row['adapterFileBytes'] as number, row.variant).toBeGreaterThanOrEqual(4 * row.trainableParams);
    }
  });

  it('gives merged inference outputs equal to unmerged ones within 1e-5 (HyperLoRA: merge refused, checked in the run)', () => {
    for (const method of methods) {
      if (method.variant === 'full' || method.variant === 'hyperlora') {
        // No adapter to merge; a HyperLoRA's merge must refuse (measureInference throws if it does not).
        expect(method.mergeMaxAbsDiff).toBeNull();
        expect(method.merges).toBe(method.variant === 'full');
        continue;
      }
      expect(method.mergeMaxAbsDiff, method.label).not.toBeNull();
      expect(method.mergeMaxAbsDiff!, method.label).toBeLessThanOrEqual(1e-5);
    }
  });

  it('reports the validation loss as the mean over the three seeds', () => {
    for (const method of methods) {
      expect(method.valLosses).toHaveLength(3);
      const mean = method.valLosses.reduce((sum, value) => sum + value, 0) / 3;
      expect(method.row['valLoss'] as number).toBeCloseTo(mean, 12);
      const spread = Math.sqrt(method.valLosses.reduce((sum, value) => sum + (value - mean) ** 2, 0) / 2);
      expect(method.row['valLossSpread'] as number).toBeCloseTo(spread, 12);
    }
  });
});

describe('guideVerdict', () => {
  const memory = GUIDE_ROWS.find((row: { feature: string }) => row.feature === 'Memory usage');

  it('agrees when the guide and the measurement both rank a method better than LoRA', () => {
    expect(guideVerdict(memory, 'qlora', 40, 100).agrees).toBe(true);
  });

  it('disagrees when the guide ranks a method worse than LoRA and the measurement finds it the same', () => {
    const verdict = guideVerdict(memory, 'dora', 105, 100);
    expect(verdict.agrees).toBe(false);
    expect(verdict.text).toContain('guide: worse than LoRA; measured: same as LoRA');
  });
});

describe('lineChartSvg', () => {
  it('draws one polyline per series with one point per width', () => {
    const svg = lineChartSvg({
      title: 't',
      yLabel: 'y',
      series: [
        { label: 'a', points: [{ x: 128, y: 1 }, { x: 256, y: 10 }] },
        { label: 'b & c', points: [{ x: 128, y: 2 }, { x: 256, y: 20 }] },
      ],
    });
    expect(svg.match(/<polyline/gu)).toHaveLength(2);
    expect(svg.match(/<circle/gu)).toHaveLength(4);
    expect(svg).toContain('b &amp; c');
  });
});
