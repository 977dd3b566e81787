// The LoRA step's attention and rank-8 products, and its layers' fused passes, alone, on the default backend (a measurement, not a
// test; nothing asserts a timing):
//   node bench/products.mjs [--reps 40] [--threads N]
// Each product of the `small` LoRA step that core's batched SIMD kernel computes (attention's four
// forms, the nine rank-8 forms LoRA's layers compose on other backends) and a [1,8]·[8,8] product
// (the fixed cost of a call), causal attention's triangular products (core's WASM kernels), then a
// LoRA layer's forward and backward passes as core's fused WASM kernels run them and as the products
// compose them, and causal attention on long sequences both ways (time and peak tensor bytes), timed:
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
/** Median ms of `reps` calls of `run` (which returns what it made, disposed after timing). */
function timeCalls(run, evict) {
  const times = [];
  for (let rep = -5; rep < reps; rep++) {
    if (evict) traffic.fill(rep);
    const started = performance.now();
    const made = run();
    const ms = performance.now() - started;
    tf.dispose(made);
    if (rep >= 0) times.push(ms);
  }
  return median(times);
}

/** A row of the report: `flop` timed warm and after the traffic. */
function measured(name, product, flop, run) {
  const warmMs = timeCalls(run, false);
  const afterTrafficMs = timeCalls(run, true);
  const rate = (ms) => Number((flop / ms / 1e6).toFixed(1));
  return { product, name, flop, warmUs: Math.round(warmMs * 1000), warmGflops: rate(warmMs), afterTrafficUs: Math.round(afterTrafficMs * 1000), afterTrafficGflops: rate(afterTrafficMs) };
}

const reference = referenceGflops();
const rows = [];
for (const [name, aShape, bShape, transposeA, transposeB] of PRODUCTS) {
  const a = tf.randomNormal(aShape, 0, 1, 'float32', 3);
  const b = tf.randomNormal(bShape, 0, 1, 'float32', 4);
  const outputShape = tf.tidy(() => tf.matMul(a, b, transposeA, transposeB).shape);
  const flop = coreInternal.matMulFlops({ kernelName: 'BatchMatMul', inputShapes: { a: aShape, b: bShape }, outputShapes: [outputShape], attrs: { transposeA, transposeB } });
  rows.push(measured(name, `${shapeText(aShape, transposeA)}·${shapeText(bShape, transposeB)}`, flop, () => tf.matMul(a, b, transposeA, transposeB)));
  tf.dispose([a, b]);
}

// Causal attention's products as the step runs them on WASM (core's triangular kernels), beside the
// full products above. The FLOP are the triangle's (matMulFlops), the work needed.
const { CAUSAL_SCORES_KERNEL, CAUSAL_MIX_KERNEL } = coreInternal;
if (tf.getKernel(CAUSAL_SCORES_KERNEL, tf.getBackend()) !== undefined) {
  for (const [name, kernelName, aShape, transposeA] of [
    ['causal tril(q·kᵀ) (and dy·vᵀ)', CAUSAL_SCORES_KERNEL, [8, 4, 128, 64], false],
    ['causal tril(p)·v (and dS·k)', CAUSAL_MIX_KERNEL, [8, 4, 128, 128], false],
    ['causal tril(p)ᵀ·dy (and dSᵀ·q)', CAUSAL_MIX_KERNEL, [8, 4, 128, 128], true],
  ]) {
    const bShape = [8, 4, 128, 64];
    const a = tf.randomNormal(aShape, 0, 1, 'float32', 5);
    const b = tf.randomNormal(bShape, 0, 1, 'float32', 6);
    const run = () => tf.engine().runKernel(kernelName, { a, b }, { transposeA });
    const outputShape = tf.tidy(() => run().shape);
    const flop = coreInternal.matMulFlops({ kernelName, inputShapes: { a: aShape, b: bShape }, outputShapes: [outputShape], attrs: { transposeA } });
    const form = kernelName === CAUSAL_SCORES_KERNEL ? `tril(${shapeText(aShape)}·${shapeText(bShape, true)})` : `tril(${shapeText(aShape)})${transposeA ? 'ᵀ' : ''}·${shapeText(bShape)}`;
    rows.push(measured(name, form, flop, run));
    tf.dispose([a, b]);
  }
}

// Causal attention whole, as the step runs it on WASM (core's one kernel each way), and as the
// separate kernels compute the same values (the triangular products around the scaled softmax). The
// FLOP are each form's triangles' (two forward; backward five in one kernel, which recomputes the
// scores, four separately), so the GFLOP/s of the two forms differ by more than their times do.
const { CAUSAL_ATTENTION_KERNEL, CAUSAL_ATTENTION_GRAD_KERNEL, SCALED_SOFTMAX_KERNEL, SCALED_SOFTMAX_GRAD_KERNEL } = coreInternal;
if (tf.getKernel(CAUSAL_ATTENTION_KERNEL, tf.getBackend()) !== undefined) {
  const shape = [8, 4, 128, 64];
  const [q, k, v, dy] = [7, 8, 9, 10].map((seed) => tf.randomNormal(shape, 0, 1, 'float32', seed));
  const scale = 0.125;
  const mask = tf.tensor2d(Float32Array.from({ length: 128 * 128 }, (_, i) => (i % 128 > Math.floor(i / 128) ? -1e9 : 0)), [128, 128]);
  const triangle = coreInternal.matMulFlops({ kernelName: CAUSAL_SCORES_KERNEL, inputShapes: { a: shape, b: shape }, outputShapes: [[8, 4, 128, 128]], attrs: {} });
  const [o, stats] = tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q, k, v }, { scale });
  const p = tf.tidy(() => tf.engine().runKernel(SCALED_SOFTMAX_KERNEL, { x: tf.engine().runKernel(CAUSAL_SCORES_KERNEL, { a: q, b: k }, {}), mask }, { scale }));
  const form = `q${shapeText(shape)}`;
  rows.push(measured('causal attention forward, one kernel', form, 2 * triangle, () => tf.engine().runKernel(CAUSAL_ATTENTION_KERNEL, { q, k, v }, { scale })));
  rows.push(
    measured('causal attention forward, separate kernels', form, 2 * triangle, () =>
      tf.tidy(() => tf.engine().runKernel(CAUSAL_MIX_KERNEL, { a: tf.engine().runKernel(SCALED_SOFTMAX_KERNEL, { x: tf.engine().runKernel(CAUSAL_SCORES_KERNEL, { a: q, b: k }, {}), mask }, { scale }), b: v }, { transposeA: false })),
    ),
  );
  rows.push(measured('causal attention backward, one kernel', form, 5 * triangle, () => tf.engine().runKernel(CAUSAL_ATTENTION_GRAD_KERNEL, { dy, q, k, v, stats }, { scale })));
  rows.push(
    measured('causal attention backward, separate kernels', form, 4 * triangle, () =>
      tf.tidy(() => {
        const ds = tf.engine().runKernel(SCALED_SOFTMAX_GRAD_KERNEL, { dy: tf.engine().runKernel(CAUSAL_SCORES_KERNEL, { a: dy, b: v }, {}), y: p }, { scale });
        return [false, true].map((transposeA) => tf.engine().runKernel(CAUSAL_MIX_KERNEL, { a: ds, b: transposeA ? q : k }, { transposeA })).concat(tf.engine().runKernel(CAUSAL_MIX_KERNEL, { a: p, b: dy }, { transposeA: true }));
      }),
    ),
  );
  tf.dispose([q, k, v, dy, mask, o, stats, p]);
}

// Long sequences: GPT-2-sized heads [1, 12, T, 64], forward and backward through the ops' gradients
// (one kernel each way, the helper's buffer grown for T above 450; or the separate kernels around
// the scaled softmax, which keep the [1, 12, T, T] probabilities for the gradient), timed as above
// and with the peak tensor bytes of one pass (tf.profile; the one kernel's own scratch, 4–8 MB at
// T = 1,024, is the backend's and not counted).
const longRows = [];
if (tf.getKernel(CAUSAL_ATTENTION_KERNEL, tf.getBackend()) !== undefined) {
  for (const t of [512, 1024]) {
    const shape = [1, 12, t, 64];
    const [q, k, v, dy] = [11, 12, 13, 14].map((seed) => tf.randomNormal(shape, 0, 1, 'float32', seed));
    const mask = tf.tensor2d(Float32Array.from({ length: t * t }, (_, i) => (i % t > Math.floor(i / t) ? -1e9 : 0)), [t, t]);
    const scale = 0.125;
    const forms = {
      'one kernel each way': (a, b, c) => coreInternal.causalAttention(a, b, c, scale),
      'separate kernels': (a, b, c) => coreInternal.causalMix(coreInternal.scaledSoftmax(coreInternal.causalScores(a, b), scale, mask), c),
    };
    for (const [form, attend] of Object.entries(forms)) {
      const pass = () => tf.grads((a, b, c) => tf.sum(tf.mul(attend(a, b, c), dy)))([q, k, v]);
      const before = tf.memory().numBytes;
      const { peakBytes } = await tf.profile(() => tf.dispose(pass()));
      longRows.push({ name: `causal attention forward + backward, ${form}`, shape, warmMs: Number(timeCalls(pass, false).toFixed(1)), peakMiB: Number(((peakBytes - before) / 2 ** 20).toFixed(1)) });
    }
    tf.dispose([q, k, v, dy, mask]);
  }
}

// A LoRA layer's passes as the step runs them on WASM (core's fused kernels, one call each way), and
// the same arithmetic composed of products, the scaling and the add (as other backends run it). The
// FLOP are the rank-8 products' (matMulFlops), so the fused and composed rows compare directly.
const { LORA_FORWARD_KERNEL, LORA_BACKWARD_KERNEL } = coreInternal;
const fusedPasses = tf.getKernel(LORA_FORWARD_KERNEL, tf.getBackend()) !== undefined;
for (const [layer, inFeatures, outFeatures] of [['c_attn', 256, 768], ['c_proj', 256, 256]]) {
  const rank = 8;
  const s = 2;
  const [x, a, b, base, dy] = [[1024, inFeatures], [rank, inFeatures], [outFeatures, rank], [1024, outFeatures], [1024, outFeatures]].map((shape, i) => tf.randomNormal(shape, 0, 1, 'float32', 10 + i));
  const hs = tf.tidy(() => tf.mul(tf.matMul(x, a, false, true), s));
  const shapes = { x: x.shape, a: a.shape, b: b.shape };
  const forwardFlop = coreInternal.matMulFlops({ kernelName: LORA_FORWARD_KERNEL, inputShapes: shapes, outputShapes: [], attrs: {} });
  const backwardFlop = coreInternal.matMulFlops({ kernelName: LORA_BACKWARD_KERNEL, inputShapes: shapes, outputShapes: [], attrs: {} });
  const form = `x[1024,${inFeatures}] r ${rank} out ${outFeatures}`;
  if (fusedPasses) {
    rows.push(measured(`LoRA forward, fused (${layer})`, form, forwardFlop, () => tf.engine().runKernel(LORA_FORWARD_KERNEL, { x, a, b, base }, { scaling: s })));
    rows.push(measured(`LoRA backward, fused (${layer})`, form, backwardFlop, () => tf.engine().runKernel(LORA_BACKWARD_KERNEL, { dy, x, a, b, hs }, { scaling: s })));
  }
  rows.push(measured(`LoRA forward, composed (${layer})`, form, forwardFlop, () => tf.tidy(() => tf.add(base, tf.matMul(tf.mul(tf.matMul(x, a, false, true), s), b, false, true)))));
  rows.push(
    measured(`LoRA backward, composed (${layer})`, form, backwardFlop, () =>
      tf.tidy(() => {
        const g = tf.mul(tf.matMul(dy, b), s);
        return [tf.matMul(g, a), tf.matMul(g, x, true, false), tf.matMul(dy, hs, true, false)];
      }),
    ),
  );
  tf.dispose([x, a, b, base, dy, hs]);
}
const referenceRounded = Number(reference.toFixed(1));
const percent = (gflops) => `${((100 * gflops) / reference).toFixed(0)}%`;
console.error(`${report.kind} (${report.threads} thread(s)); 1024² matMul in this process: ${referenceRounded} GFLOP/s; medians of ${reps} calls`);
console.error(`${'product'.padEnd(36)} ${'form'.padEnd(28)} ${'MFLOP'.padStart(6)}  warm µs (GFLOP/s, of 1024²)  after 64 MB µs (GFLOP/s, of 1024²)`);
for (const row of rows) {
  const warm = `${row.warmUs} (${row.warmGflops}, ${percent(row.warmGflops)})`;
  const after = `${row.afterTrafficUs} (${row.afterTrafficGflops}, ${percent(row.afterTrafficGflops)})`;
  console.error(`${row.name.padEnd(36)} ${row.product.padEnd(28)} ${(row.flop / 1e6).toFixed(1).padStart(6)}  ${warm.padEnd(28)} ${after}`);
}
for (const row of longRows) console.error(`${row.name.padEnd(56)} [${row.shape.join(',')}]  ${row.warmMs} ms, peak tensor bytes ${row.peakMiB} MiB`);
console.log(JSON.stringify({ kind: 'products', backend: report.kind, threads: report.threads, reps, referenceGflops: referenceRounded, rows, longSequences: longRows }));
process.exit(0);
