// Scaling: step time, peak bytes and adapter file bytes of every method on GPT-2s of three widths
// (random weights, the same State of the Union batches), and an SVG chart of each against width.
import { core, models, tf } from '../lib/packages.mjs';
import { LANGUAGE_CONDITIONS } from './data.mjs';
import { applyMethod, measureStepPeak, parameterCounts, residentBytes, savedBytes, trainMethod, withCondition } from './measure.mjs';
import { learningRateOf, TARGET_MODULES } from './rows.mjs';

function gpt2Config({ width, layers, contextLength }) {
  return {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    vocab_size: 257,
    n_positions: contextLength,
    n_embd: width,
    n_layer: layers,
    n_head: 4,
    attn_pdrop: 0,
    embd_pdrop: 0,
    resid_pdrop: 0,
  };
}

/** One method at one width: parameter counts, median step time, resident and peak bytes of a step, saved adapter (or checkpoint) bytes. */
export async function runScalingPoint({ definition, modules, width, settings, batches }) {
  const model = models.createModel(gpt2Config({ width, layers: settings.layers, contextLength: settings.contextLength }), { seed: 1 });
  let adapterModel = null;
  try {
    ({ adapterModel } = applyMethod(model, definition, modules, {
      seed: 0,
      context: { targetModules: TARGET_MODULES, fanInFanOut: true, steps: settings.steps, conditionFactors: LANGUAGE_CONDITIONS.factors },
    }));
    const lossFn = (batch) =>
      tf.tidy(() => {
        const ids = tf.tensor2d(batch.map((window) => window.ids), [batch.length, settings.contextLength], 'int32');
        return withCondition(definition, adapterModel, batch.map((window) => window.condition), () => core.causalLmLoss(model.forward(ids), ids));
      });
    const optimizer = new core.AdamW({ learningRate: learningRateOf(definition), weightDecay: 0 });
    try {
      const counts = parameterCounts(model, adapterModel);
      const { stepMs } = await trainMethod({ model, adapterModel, lossFn, batches, steps: settings.steps, learningRate: learningRateOf(definition), optimizer });
      const resident = residentBytes(model, optimizer);
      const fileBytes = await savedBytes((directory) => (adapterModel ? core.saveAdapter(adapterModel, directory) : models.savePretrained(model, directory)));
      const peakBytes = await measureStepPeak({ model, adapterModel, lossFn, batch: batches[0], optimizer, outsideTensors: resident.outsideTensors });
      return { width, counts, stepMs, peakBytes, fileBytes, baseBytes: resident.base, optimizerStateBytes: resident.optimizerState };
    } finally {
      optimizer.dispose();
    }
  } finally {
    (adapterModel ?? model).dispose();
  }
}

const PALETTE = ['#000000', '#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2'];

function escapeXml(text) {
  return String(text).replace(/[<>&"]/gu, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]);
}

/**
 * A standalone SVG line chart: x = model width (one tick per width), y on a log scale, one line per
 * series `{ label, points: [{ x, y }] }`.
 */
export function lineChartSvg({ title, yLabel, series, format = (value) => String(value) }) {
  const width = 640;
  const height = 400;
  const margin = { left: 80, right: 190, top: 40, bottom: 50 };
  const xs = [...new Set(series.flatMap((line) => line.points.map((point) => point.x)))].sort((a, b) => a - b);
  const ys = series.flatMap((line) => line.points.map((point) => point.y)).filter((y) => y > 0);
  const low = Math.log10(Math.min(...ys)) - 0.05;
  const high = Math.log10(Math.max(...ys)) + 0.05;
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const xAt = (x) => margin.left + (xs.length === 1 ? plotWidth / 2 : (xs.indexOf(x) / (xs.length - 1)) * plotWidth);
  const yAt = (y) => margin.top + plotHeight - ((Math.log10(y) - low) / (high - low)) * plotHeight;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${margin.left}" y="24" font-size="15">${escapeXml(title)}</text>`,
    `<line x1="${margin.left}" y1="${margin.top + plotHeight}" x2="${margin.left + plotWidth}" y2="${margin.top + plotHeight}" stroke="#333"/>`,
    `<line x1="${margin.left}" y1="${margin.top}" x2="${margin.left}" y2="${margin.top + plotHeight}" stroke="#333"/>`,
    `<text x="${margin.left + plotWidth / 2}" y="${height - 12}" text-anchor="middle">model width d (log₂ spacing)</text>`,
    `<text transform="translate(16 ${margin.top + plotHeight / 2}) rotate(-90)" text-anchor="middle">${escapeXml(yLabel)} (log scale)</text>`,
  ];
  for (const x of xs) parts.push(`<text x="${xAt(x)}" y="${margin.top + plotHeight + 18}" text-anchor="middle">${x}</text>`);
  for (let decade = Math.ceil(low); decade <= Math.floor(high); decade++) {
    const y = yAt(10 ** decade);
    parts.push(`<line x1="${margin.left}" y1="${y}" x2="${margin.left + plotWidth}" y2="${y}" stroke="#ddd"/>`);
    parts.push(`<text x="${margin.left - 6}" y="${y + 4}" text-anchor="end">${escapeXml(format(10 ** decade))}</text>`);
  }
  series.forEach((line, index) => {
    const color = PALETTE[index % PALETTE.length];
    const points = line.points.filter((point) => point.y > 0);
    parts.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.map((point) => `${xAt(point.x).toFixed(1)},${yAt(point.y).toFixed(1)}`).join(' ')}"/>`);
    for (const point of points) parts.push(`<circle cx="${xAt(point.x).toFixed(1)}" cy="${yAt(point.y).toFixed(1)}" r="3" fill="${color}"/>`);
    const legendY = margin.top + 10 + index * 18;
    parts.push(`<line x1="${width - margin.right + 15}" y1="${legendY}" x2="${width - margin.right + 35}" y2="${legendY}" stroke="${color}" stroke-width="2"/>`);
    parts.push(`<text x="${width - margin.right + 40}" y="${legendY + 4}">${escapeXml(line.label)}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
