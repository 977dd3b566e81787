// The LoRA step's attention and rank-8 products alone, on the default backend (a measurement, not a
// test; nothing asserts a timing):
//   node bench/products.mjs [--reps 40] [--threads N]
// Each product of the `small` LoRA step that core's batched SIMD kernel computes (attention's four
// forms, LoRA's nine rank-8 forms) and a [1,8]·[8,8] product (the fixed cost of a call), timed:
//   warm:  back to back, operands in cache;
//   after: right after 64 MB of other memory traffic (a JS array filled between calls), as in a
//          training step, where the kernels before a product have evicted its operands.
// Each figure is the median of `reps` calls (after 5 discarded), as GFLOP/s and as a share of the
// 1024² product timed in the same process (lib/reference.mjs, as the profile section times it).
// Prints one JSON object on its last stdout line; the table goes to stderr.
import { parseArgs } from 'node:util';
import { median } from './lib/child.mjs';
import { coreInternal, cudaBackend, tf } from './lib/packages.mjs';
import { referenceGflops } from './lib/reference.mjs';

const { values } = parseArgs({ options: { reps: { type: 'string', default: '40' }, threads: { type: 'string' } } });
const reps = Number(values.reps);
const threads = values.threads === undefined ? undefined : Number(values.threads);
const report = await cudaBackend.useBestBackend(threads === undefined ? {} : { threads });

// [name, a shape, b shape, transposeA, transposeB]: the step's forms, as the profile names them.
const PRODUCTS = [
  ['attention q·kᵀ', [8, 4, 128, 64], [8, 4, 128, 64], false, true],
  ['attention p·v', [8, 4, 128, 128], [8, 4, 128, 64], false, false],
  ['attention pᵀ·dy', [8, 4, 128, 128], [8, 4, 128, 64], true, false],
  ['attention dy·vᵀ', [8, 4, 128, 64], [8, 4, 128, 64], false, true],
  ['gradient of A (c_attn, c_proj)', [1024, 8], [1024, 256], true, false],
  ['up-projection (c_attn)', [1024, 8], [768, 8], false, true],
  ['gradient of B (c_attn)', [1024, 768], [1024, 8], true, false],
  ['down-projection x·Aᵀ', [1024, 256], [8, 256], false, true],
  ['input gradient through A', [1024, 8], [8, 256], false, false],
  ['gradient through B (c_attn)', [1024, 768], [768, 8], false, false],
  ['up-projection (c_proj)', [1024, 8], [256, 8], false, true],
  ['gradient through B (c_proj)', [1024, 256], [256, 8], false, false],
  ['gradient of B (c_proj)', [1024, 256], [1024, 8], true, false],
  ['a call alone: [1,8]·[8,8]', [1, 8], [8, 8], false, false],
];

const shapeText = (shape, transposed) => `[${shape.join(',')}]${transposed ? 'ᵀ' : ''}`;

// 64 MB outside the backend's memory: filling it evicts every cache level the product uses.
const traffic = new Float32Array(16 << 20);
function timeCalls(a, b, transposeA, transposeB, evict) {
  const times = [];
  for (let rep = -5; rep < reps; rep++) {
    if (evict) traffic.fill(rep);
    const started = performance.now();
    const product = tf.matMul(a, b, transposeA, transposeB);
    const ms = performance.now() - started;
    product.dispose();
    if (rep >= 0) times.push(ms);
  }
  return median(times);
}

const reference = referenceGflops();
const rows = [];
for (const [name, aShape, bShape, transposeA, transposeB] of PRODUCTS) {
  const a = tf.randomNormal(aShape, 0, 1, 'float32', 3);
  const b = tf.randomNormal(bShape, 0, 1, 'float32', 4);
  const outputShape = tf.tidy(() => tf.matMul(a, b, transposeA, transposeB).shape);
  const flop = coreInternal.matMulFlops({ kernelName: 'BatchMatMul', inputShapes: { a: aShape, b: bShape }, outputShapes: [outputShape], attrs: { transposeA, transposeB } });
  const warmMs = timeCalls(a, b, transposeA, transposeB, false);
  const afterTrafficMs = timeCalls(a, b, transposeA, transposeB, true);
  tf.dispose([a, b]);
  const rate = (ms) => Number((flop / ms / 1e6).toFixed(1));
  rows.push({
    product: `${shapeText(aShape, transposeA)}·${shapeText(bShape, transposeB)}`,
    name,
    flop,
    warmUs: Math.round(warmMs * 1000),
    warmGflops: rate(warmMs),
    afterTrafficUs: Math.round(afterTrafficMs * 1000),
    afterTrafficGflops: rate(afterTrafficMs),
  });
}
const referenceRounded = Number(reference.toFixed(1));
const percent = (gflops) => `${((100 * gflops) / reference).toFixed(0)}%`;
console.error(`${report.kind} (${report.threads} thread(s)); 1024² matMul in this process: ${referenceRounded} GFLOP/s; medians of ${reps} calls`);
console.error(`${'product'.padEnd(32)} ${'form'.padEnd(26)} ${'MFLOP'.padStart(6)}  warm µs (GFLOP/s, of 1024²)  after 64 MB µs (GFLOP/s, of 1024²)`);
for (const row of rows) {
  const warm = `${row.warmUs} (${row.warmGflops}, ${percent(row.warmGflops)})`;
  const after = `${row.afterTrafficUs} (${row.afterTrafficGflops}, ${percent(row.afterTrafficGflops)})`;
  console.error(`${row.name.padEnd(32)} ${row.product.padEnd(26)} ${(row.flop / 1e6).toFixed(1).padStart(6)}  ${warm.padEnd(28)} ${after}`);
}
console.log(JSON.stringify({ kind: 'products', backend: report.kind, threads: report.threads, reps, referenceGflops: referenceRounded, rows }));
process.exit(0);
