// Generation speed in its own process:
//   node bench/generate-child.mjs [--backend KIND] [--threads N] [--new-tokens 16] [--reps 3]
// @lora/models' generate() (greedy, key/value cache) on the `small` GPT-2, batch 1: the base model,
// the model with an unmerged LoRA adapter, and with it merged; prompts of 16 and 112 tokens; and
// without the cache for comparison. Prints one JSON object on its last stdout line.
import { parseArgs } from 'node:util';
import { median } from './lib/child.mjs';
import { createModel, LORA_CONFIG } from './lib/gpt2.mjs';
import { core, cudaBackend, models } from './lib/packages.mjs';

const { values } = parseArgs({
  options: {
    backend: { type: 'string' },
    threads: { type: 'string' },
    'new-tokens': { type: 'string', default: '16' },
    reps: { type: 'string', default: '9' },
  },
});
const threads = values.threads === undefined ? undefined : Number(values.threads);
const report = await cudaBackend.useBestBackend(values.backend ? { prefer: values.backend, fallback: false, threads } : { threads });
const newTokens = Number(values['new-tokens']);
const reps = Number(values.reps);

/**
 * Prefill (prompt → first token) and per-token decode times of one generate() call, medians over
 * reps after a warm-up. A call's per-token time is the median of its steps: a token takes a few
 * ms, so one step delayed by another process would otherwise move the figure.
 */
function measure(model, promptLength, useCache) {
  const prompt = Array.from({ length: promptLength }, (_, i) => 97 + (i % 26));
  const prefills = [];
  const decodes = [];
  for (let rep = 0; rep <= reps; rep++) {
    const stamps = [];
    const started = performance.now();
    models.generate(model, [prompt], { maxNewTokens: newTokens, useCache, eosTokenId: [], onStep: () => stamps.push(performance.now()) });
    if (rep === 0) continue;
    prefills.push(stamps[0] - started);
    decodes.push(median(stamps.slice(1).map((stamp, i) => stamp - stamps[i])));
  }
  return { prefillMs: Number(median(prefills).toFixed(2)), tokenMs: Number(median(decodes).toFixed(2)), tokensPerSec: Number((1000 / median(decodes)).toFixed(1)) };
}

const rows = [];
const row = (variant, promptLength, useCache, result) => rows.push({ kind: 'generate', variant, promptLength, newTokens, useCache, backend: report.backend, threads: report.threads, ...result, backendKind: report.kind });

const model = createModel('small');
model.eval();
// Frozen, as the adapter rows' base is (AdapterModel freezes it): the rows then differ only by the
// adapter (core keeps the transposed copy a frozen weight's product needs, e.g. the tied head's).
model.setTrainable(false);
// Discarded rounds first: V8 moves WASM functions to its optimising compiler only once they are
// hot, so the process's first few dozen calls run slower (seen: the first base row 1.5x the
// same row measured three rounds later), which made the first row, the base, look slow.
for (let round = 0; round < 3; round++) {
  measure(model, 16, true);
  measure(model, 112, true);
}
row('base', 16, true, measure(model, 16, true));
row('base', 112, true, measure(model, 112, true));
row('base', 112, false, measure(model, 112, false));
const adapterModel = core.AdapterModel.create(model, { registry: core.createLoraRegistry({ plugins: [core.lora({ seed: 3 })] }), config: LORA_CONFIG });
model.eval();
row('lora-unmerged', 16, true, measure(model, 16, true));
row('lora-unmerged', 112, true, measure(model, 112, true));
adapterModel.merge();
row('lora-merged', 16, true, measure(model, 16, true));
row('lora-merged', 112, true, measure(model, 112, true));
model.dispose();
process.stdout.write(`\n${JSON.stringify({ backendKind: report.kind, threads: report.threads, rows })}\n`);
