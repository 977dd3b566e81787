// `pnpm bench` (after `turbo run build`): runs the benchmark sections and prints a report, or with
// `--json` one JSON array of result rows on stdout (progress goes to stderr either way).
//
//   node bench/run.mjs [--json] [--only throughput] [--quick] [--threads N]
//
// Sections are listed in SECTIONS; each exports a function taking { quick, threads, log, print }
// and returning its rows. Ratios are measured within one run; nothing here asserts timings.
import { parseArgs } from 'node:util';
import { runArchitectures } from './architectures.mjs';
import { runGenerate } from './generate.mjs';
import { runProfile } from './profile.mjs';
import { runComparison } from './comparison.mjs';
import { runThroughput } from './throughput.mjs';

const SECTIONS = {
  throughput: runThroughput,
  profile: runProfile,
  generate: runGenerate,
  architectures: runArchitectures,
  comparison: runComparison,
};

const { values } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    only: { type: 'string' },
    quick: { type: 'boolean', default: false },
    threads: { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

if (values.help) {
  console.log(`usage: pnpm bench [--json] [--only ${Object.keys(SECTIONS).join(',')}] [--quick] [--threads N]`);
  process.exit(0);
}

const selected = values.only ? values.only.split(',').map((name) => name.trim()) : Object.keys(SECTIONS);
const unknown = selected.filter((name) => !(name in SECTIONS));
if (unknown.length > 0) {
  console.error(`Unknown section(s): ${unknown.join(', ')}. Known: ${Object.keys(SECTIONS).join(', ')}.`);
  process.exit(2);
}
const threads = values.threads === undefined ? undefined : Number(values.threads);
if (threads !== undefined && !(Number.isInteger(threads) && threads > 0)) {
  console.error(`--threads must be a positive integer, got ${values.threads}.`);
  process.exit(2);
}

const started = performance.now();
const rows = [];
for (const name of selected) {
  const sectionRows = await SECTIONS[name]({
    quick: values.quick,
    threads,
    log: (text) => process.stderr.write(`${text}\n`),
    print: values.json ? () => {} : (text) => process.stdout.write(`${text}\n\n`),
  });
  rows.push(...sectionRows);
}
if (values.json) process.stdout.write(`${JSON.stringify(rows)}\n`);
else process.stdout.write(`(bench took ${((performance.now() - started) / 1000).toFixed(0)} s)\n`);
