// The profile section of `pnpm bench` (`pnpm bench --only profile`): where the time of one step
// goes, per kernel and per product shape, for each variant on the default backend. Rows:
// { kind: 'profile', variant, backend, threads, stepMs, kernelCalls, totalFlop, gflops, kernels, products }.
import { fileURLToPath } from 'node:url';
import { runChild, table } from './lib/child.mjs';

const CHILD = fileURLToPath(new URL('./profile-child.mjs', import.meta.url));
/** Products listed per variant in the text report (the JSON has them all). */
const PRODUCTS_SHOWN = 16;
/** Kernels listed per variant in the text report. */
const KERNELS_SHOWN = 18;
/** The per-product floor of the speed issue: a share of the 1024² rate measured in the same process. */
const PRODUCT_FLOOR = 0.6;

const percent = (share) => `${(100 * share).toFixed(1)}%`;

/** Text report of one profiled variant. */
export function formatProfile(profile, referenceGflops) {
  const kernels = profile.kernels.slice(0, KERNELS_SHOWN);
  const rest = profile.kernels.slice(KERNELS_SHOWN);
  const kernelRows = kernels.map((entry) => [entry.kernel, entry.calls, entry.nestedCalls || '', entry.ms.toFixed(1), percent(entry.share)]);
  if (rest.length > 0) {
    const ms = rest.reduce((sum, entry) => sum + entry.ms, 0);
    kernelRows.push([`(${rest.length} others)`, rest.reduce((sum, entry) => sum + entry.calls, 0), '', ms.toFixed(1), percent(ms / profile.stepMs)]);
  }
  kernelRows.push(['(outside kernels: JS, tape, tidy)', '', '', profile.outsideKernelsMs.toFixed(1), percent(profile.outsideKernelsMs / profile.stepMs)]);
  const productRows = profile.products
    .slice(0, PRODUCTS_SHOWN)
    .map((entry) => [entry.product, entry.calls, entry.ms.toFixed(1), entry.gflops.toFixed(1), percent(entry.gflops / referenceGflops), percent(entry.share)]);
  // Listed in full, as the table may not reach them.
  const below = profile.products.filter((entry) => entry.gflops < PRODUCT_FLOOR * referenceGflops);
  const belowMs = below.reduce((sum, entry) => sum + entry.ms, 0);
  const floorLine =
    below.length === 0
      ? `Every product runs at ${percent(PRODUCT_FLOOR)} of the 1024² rate or more.`
      : `Below ${percent(PRODUCT_FLOOR)} of the 1024² rate: ${below.length} of ${profile.products.length} product shapes, ${belowMs.toFixed(1)} ms (${percent(belowMs / profile.stepMs)} of the step): ${below
          .map((entry) => `${entry.product} ${percent(entry.gflops / referenceGflops)}`)
          .join(', ')}.`;
  return [
    `### ${profile.variant}: ${profile.stepMs.toFixed(0)} ms (fastest of ${profile.repeat} steps; each call's fastest time${profile.merged ? '' : ': steps differed, the fastest step alone'}), ${profile.kernelCalls} kernel calls, ${(profile.totalFlop / 1e9).toFixed(2)} GFLOP in products → ${profile.gflops.toFixed(1)} GFLOP/s over the step`,
    '',
    table(['kernel', 'calls', 'nested', 'ms (self)', 'share'], kernelRows, ['left']),
    '',
    table(['product (a·b, ᵀ = transposed operand)', 'calls', 'ms', 'GFLOP/s', 'of 1024²', 'share'], productRows, ['left']),
    '',
    floorLine,
  ].join('\n');
}

/**
 * Run the section: one child process profiles 5 steps (after a warm-up step) of each variant on
 * the default backend. Returns the JSON rows; `print` receives the text report.
 */
export async function runProfile({ quick = false, threads, log = (text) => process.stderr.write(`${text}\n`), print = () => {} } = {}) {
  const args = [...(threads === undefined ? [] : ['--threads', String(threads)]), ...(quick ? ['--variants', 'lora'] : [])];
  log(`profile: ${quick ? 'lora' : 'forward, lora and full'} on the default backend, every kernel call of 5 steps recorded…`);
  const result = await runChild(CHILD, args, log);
  if (!result.ok) throw new Error(`The profile failed: ${result.reason}`);
  const { backend, backendKind, threads: used, kernelBuild, config, referenceGflops, profiles } = result.value;
  const lines = [
    `## profile (${backendKind}, ${used} thread(s), ${config}${kernelBuild ? `, core's ${kernelBuild} kernel build` : ''}; 1024² matMul in the same process: ${referenceGflops.toFixed(1)} GFLOP/s)`,
    '',
    'ms (self) counts each ms once (a kernel called by a kernel — "nested" — is not counted in its caller); a product\'s ms includes what its kernel did to reach the fast form. Kernel timing adds a little overhead per call.',
  ];
  for (const profile of profiles) lines.push('', formatProfile(profile, referenceGflops));
  print(lines.join('\n'));
  return profiles.map((profile) => ({ kind: 'profile', backend, threads: used, kernelBuild, config, referenceGflops, ...profile }));
}
