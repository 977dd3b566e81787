// Generation speed in its own process:
//   node bench/generate-child.mjs [--backend KIND] [--threads N] [--new-tokens 16] [--reps 15] [--base-only] [--adapters-first]
// @lora/models' generate() (greedy, key/value cache) on the `small` GPT-2, batch 1: the base model,
// the model with an unmerged LoRA adapter, and with it merged (three models, taking turns call by
// call); prompts of 16 and 112 tokens; and without the cache for comparison. Prints one JSON object on its last stdout line.
import { parseArgs } from 'node:util';
import { median } from './lib/child.mjs';
import { createModel, LORA_CONFIG } from './lib/gpt2.mjs';
import { core, cudaBackend, models } from './lib/packages.mjs';

const { values } = parseArgs({
  options: {
    backend: { type: 'string' },
    threads: { type: 'string' },
    'new-tokens': { type: 'string', default: '16' },
    reps: { type: 'string', default: '15' },
    // Only the base model with the 16-token prompt (the under-load measurement).
    'base-only': { type: 'boolean', default: false },
    // Create the adapter models before the base model (see measureAll).
    'adapters-first': { type: 'boolean', default: false },
  },
});
const threads = values.threads === undefined ? undefined : Number(values.threads);
const report = await cudaBackend.useBestBackend(values.backend ? { prefer: values.backend, fallback: false, threads } : { threads });
const newTokens = Number(values['new-tokens']);
const reps = Number(values.reps);

/**
 * Prefill (prompt → first token) and per-token time of one generate() call. A call's per-token
 * time is its mean (decoding time / tokens), not the median of its steps: a median hid stalls that
 * are part of the speed a user gets (tfjs's XNNPACK thread pool, seen: median token 0.81 ms, mean
 * 1.82 ms). Noise from other processes is left to the median over calls.
 */
function call(model, promptLength, useCache) {
  const prompt = Array.from({ length: promptLength }, (_, i) => 97 + (i % 26));
  const stamps = [];
  const started = performance.now();
  models.generate(model, [prompt], { maxNewTokens: newTokens, useCache, eosTokenId: [], onStep: () => stamps.push(performance.now()) });
  return { prefillMs: stamps[0] - started, tokenMs: (stamps.at(-1) - stamps[0]) / (stamps.length - 1) };
}

const summary = (calls) => {
  const tokenMs = median(calls.map((c) => c.tokenMs));
  return { prefillMs: Number(median(calls.map((c) => c.prefillMs)).toFixed(2)), tokenMs: Number(tokenMs.toFixed(3)), tokensPerSec: Number((1000 / tokenMs).toFixed(1)) };
};

const rows = [];
const row = (variant, promptLength, useCache, result) =>
  rows.push({ kind: 'generate', variant, promptLength, newTokens, useCache, backend: report.backend, threads: report.threads, ...result, backendKind: report.kind });

/** A frozen model in eval mode (as the adapter rows' base is: AdapterModel freezes it), the same weights each time (seeded). */
function frozenModel() {
  const model = createModel('small');
  // Frozen: core then keeps the transposed copy a frozen weight's product needs (e.g. the tied
  // head's), so the rows differ only by the adapter.
  model.setTrainable(false);
  model.eval();
  return model;
}
if (values['base-only']) {
  const base = frozenModel();
  for (let round = 0; round < 9; round++) call(base, 16, true);
  row('base', 16, true, summary(Array.from({ length: reps }, () => call(base, 16, true))));
  base.dispose();
} else {
  measureAll();
}
process.stdout.write(`\n${JSON.stringify({ backendKind: report.kind, threads: report.threads, rows })}\n`);

function measureAll() {
  // The order the models are made in moves their speed by a few per cent (where their weights lie in
  // memory: the first made ran 2-4% faster in a run where the adapter's merged model was made first,
  // and slower than it the other way round), so `generate.mjs` runs this twice, once each way.
  const adaptersFirst = values['adapters-first'];
  const base = adaptersFirst ? null : frozenModel();
  const unmerged = frozenModel();
  core.AdapterModel.create(unmerged, { registry: core.createLoraRegistry({ plugins: [core.lora({ seed: 3 })] }), config: LORA_CONFIG });
  unmerged.eval();
  const merged = frozenModel();
  core.AdapterModel.create(merged, { registry: core.createLoraRegistry({ plugins: [core.lora({ seed: 3 })] }), config: LORA_CONFIG }).merge();
  merged.eval();
  const variants = { base: base ?? frozenModel(), 'lora-unmerged': unmerged, 'lora-merged': merged };
  const names = Object.keys(variants);

  // The three models take turns, call by call, in an order that rotates each round: a slow spell of
  // the machine then falls on all three alike, and each round gives a ratio of its own (its adapter
  // call against its base call), whose median is reported. Discarded rounds first: V8 moves WASM
  // functions to its optimising compiler only once they are hot (seen: the first base row 1.5× the
  // same row measured three rounds later).
  for (const promptLength of [16, 112]) {
    const calls = Object.fromEntries(names.map((name) => [name, []]));
    for (let round = -3; round < reps; round++) {
      const order = names.map((_, i) => names[(i + round + 3) % names.length]);
      for (const name of order) {
        const result = call(variants[name], promptLength, true);
        if (round >= 0) calls[name].push(result);
      }
    }
    for (const name of names) {
      const ratio = name === 'base' ? {} : { perTokenVsBase: Number(median(calls[name].map((c, i) => c.tokenMs / calls.base[i].tokenMs)).toFixed(3)) };
      row(name, promptLength, true, { ...summary(calls[name]), ...ratio });
    }
  }
  // Without the cache, for comparison: each token re-runs the whole sequence.
  row('base', 112, false, summary(Array.from({ length: Math.max(2, Math.ceil(reps / 3)) + 1 }, () => call(variants.base, 112, false)).slice(1)));
  for (const model of Object.values(variants)) model.dispose();
}
