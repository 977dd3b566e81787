// The data of the package's measured scripts (demo.mjs, quant-base.mjs): State of the Union
// addresses conditioned on party × era (before / from 1933), Republican × modern held out.
import * as tf from '@tensorflow/tfjs-core';
import { causalLmLoss } from '@lora/core';
import { loadStateOfTheUnion, shuffled } from '@lora/models';

/** The demo's settings, shared by every measured script: 64-byte windows, 6 a batch, AdamW lr 3e-3, 32 validation windows per condition. */
export const SETTINGS = { context: 64, batch: 6, learningRate: 3e-3, validationWindows: 32 };

/** `--name value` from the command line, or `fallback`. */
export function option(name, fallback) {
  const args = process.argv.slice(2);
  const index = args.indexOf(`--${name}`);
  return index >= 0 ? args[index + 1] : fallback;
}

/** The trained conditions. */
export const CONDITIONS = [
  { party: 'Democratic', era: 'early' },
  { party: 'Democratic', era: 'modern' },
  { party: 'Republican', era: 'early' },
];
/** The combination held out of training. */
export const HELD_OUT = { party: 'Republican', era: 'modern' };
/** Every condition, the held-out one last. */
export const ALL = [...CONDITIONS, HELD_OUT];
/** The HyperLoRA condition spec of these factors. */
export const CONDITION_SPEC = { kind: 'discrete', factors: [{ name: 'party', values: ['Democratic', 'Republican'] }, { name: 'era', values: ['early', 'modern'] }] };
/** `D × early`: a condition's column label. */
export const label = (condition) => `${condition.party === 'Democratic' ? 'D' : 'R'} × ${condition.era}`;
const keyOf = (condition) => `${condition.party}|${condition.era}`;

/**
 * Byte windows per condition: speeches split by index (every 5th for validation), cut into
 * `context`-byte windows; `validationWindows` seeded-random validation windows per condition.
 * Returns a Map from condition key to `{ speeches, train, validation }`, read with {@link dataOf}.
 */
export async function loadData({ context, validationWindows }) {
  const speeches = await loadStateOfTheUnion();
  const data = new Map();
  for (const condition of ALL) {
    const own = speeches
      .filter((speech) => speech.party === condition.party && (speech.year < 1933 ? 'early' : 'modern') === condition.era)
      .sort((a, b) => a.year - b.year);
    const cut = (list) =>
      list.flatMap((speech) => {
        const bytes = Array.from(new TextEncoder().encode(speech.text));
        const out = [];
        for (let start = 0; start + context <= bytes.length; start += context) out.push(bytes.slice(start, start + context));
        return out;
      });
    const train = cut(own.filter((_, i) => i % 5 !== 4));
    const validation = shuffled(cut(own.filter((_, i) => i % 5 === 4)), 1234).slice(0, validationWindows);
    data.set(keyOf(condition), { speeches: own.length, train, validation });
  }
  return data;
}

/** One condition's entry of {@link loadData}'s map. */
export const dataOf = (data, condition) => data.get(keyOf(condition));

/** Validation loss (mean token cross-entropy, nats) of `forward(ids, condition, rows)` on equal-length windows, 16 at a time. */
export function validationLoss(forward, windows, condition) {
  const context = windows[0].length;
  let sum = 0;
  for (let start = 0; start < windows.length; start += 16) {
    const chunk = windows.slice(start, start + 16);
    const loss = tf.tidy(() => {
      const ids = tf.tensor2d(chunk, [chunk.length, context], 'int32');
      return causalLmLoss(forward(ids, condition, chunk.length), ids).dataSync()[0];
    });
    sum += loss * chunk.length;
  }
  return sum / windows.length;
}

/** `step → { rows, conditions }`: batches of `batch` rows drawn from the given conditions in turn (balanced), seeded. */
export function batches(data, conditions, seed, batch) {
  const pools = conditions.map((condition) => shuffled(dataOf(data, condition).train, seed * 7919 + conditions.indexOf(condition)));
  return (step) => {
    const rows = [];
    const rowConditions = [];
    for (let i = 0; i < batch; i++) {
      const c = ((step - 1) * batch + i) % conditions.length;
      const pool = pools[c];
      rows.push(pool[Math.floor(((step - 1) * batch + i) / conditions.length) % pool.length]);
      rowConditions.push(conditions[c]);
    }
    return { rows, conditions: rowConditions };
  };
}
