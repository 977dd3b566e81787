// One profile in its own process (tfjs backends are per process):
//   node bench/profile-child.mjs [--backend KIND] [--threads N] [--config small] [--variants forward,lora,full] [--repeat 5]
// Records every kernel call of `repeat` steps of each variant (after one warm-up step) through
// core's kernel-registry spy and prints one JSON object on its last stdout line. The steps make the
// same calls in the same order, so each call's time is its minimum over the steps: another process
// taking a core only ever adds time, and the minimum is the call undisturbed.
import { parseArgs } from 'node:util';
import { coreInternal, cudaBackend, tf } from './lib/packages.mjs';
import { CONFIGS } from './lib/gpt2.mjs';
import { referenceGflops } from './lib/reference.mjs';
import { runVariant, VARIANTS } from './lib/variants.mjs';

const { values } = parseArgs({
  options: {
    backend: { type: 'string' },
    threads: { type: 'string' },
    config: { type: 'string', default: 'small' },
    variants: { type: 'string', default: VARIANTS.join(',') },
    repeat: { type: 'string', default: '5' },
  },
});
const threads = values.threads === undefined ? undefined : Number(values.threads);
const report = await cudaBackend.useBestBackend(values.backend ? { prefer: values.backend, fallback: false, threads } : { threads });

const shapeText = (shape) => `[${shape.join(',')}]`;

/** A product's form: operand shapes with ᵀ for a transposed operand; a LoRA layer's fused pass by its x, A and B (with its base layer, W too); a causal product with tril() round its triangle; causal attention in one kernel by its q (or fused qkv). */
function productKey(call) {
  if (call.kernelName === coreInternal.LORA_FORWARD_KERNEL || call.kernelName === coreInternal.LORA_BACKWARD_KERNEL) {
    const pass = call.kernelName === coreInternal.LORA_FORWARD_KERNEL ? 'forward' : 'backward';
    return `LoRA ${pass} x${shapeText(call.inputShapes.x)} A${shapeText(call.inputShapes.a)} B${shapeText(call.inputShapes.b)}`;
  }
  const linearForward = call.kernelName === coreInternal.LORA_LINEAR_FORWARD_KERNEL || call.kernelName === coreInternal.LORA_LINEAR_DROPOUT_FORWARD_KERNEL;
  if (linearForward || call.kernelName === coreInternal.LORA_LINEAR_BACKWARD_KERNEL) {
    const dropout = call.inputShapes.xa !== undefined ? ', dropout' : '';
    const pass = linearForward ? `forward${dropout}` : call.attrs.inputGradient === false ? 'backward (no dx)' : `backward${dropout}`;
    return `LoRA layer ${pass} x${shapeText(call.inputShapes.x)} W${shapeText(call.inputShapes.w)} A${shapeText(call.inputShapes.a)} B${shapeText(call.inputShapes.b)}`;
  }
  if (call.kernelName === coreInternal.CAUSAL_SELF_ATTENTION_KERNEL) return `causal attention qkv${shapeText(call.inputShapes.qkv)} ${call.attrs.heads} heads (2 triangles, softmax)`;
  if (call.kernelName === coreInternal.CAUSAL_SELF_ATTENTION_GRAD_KERNEL) return `causal attention gradient qkv${shapeText(call.inputShapes.qkv)} ${call.attrs.heads} heads (5 triangles, softmax's)`;
  if (call.kernelName === coreInternal.CAUSAL_ATTENTION_KERNEL) return `causal attention q${shapeText(call.inputShapes.q)} (2 triangles, softmax)`;
  if (call.kernelName === coreInternal.CAUSAL_ATTENTION_GRAD_KERNEL) return `causal attention gradient q${shapeText(call.inputShapes.q)} (5 triangles, softmax's)`;
  if (call.kernelName === coreInternal.CAUSAL_SCORES_KERNEL) return `causal tril(${shapeText(call.inputShapes.a)}·${shapeText(call.inputShapes.b)}ᵀ)`;
  if (call.kernelName === coreInternal.CAUSAL_MIX_KERNEL) return `causal tril(${shapeText(call.inputShapes.a)})${call.attrs.transposeA ? 'ᵀ' : ''}·${shapeText(call.inputShapes.b)}`;
  const a = `${shapeText(call.inputShapes.a)}${call.attrs.transposeA ? 'ᵀ' : ''}`;
  const b = `${shapeText(call.inputShapes.b)}${call.attrs.transposeB ? 'ᵀ' : ''}`;
  return `${call.kernelName === '_FusedMatMul' ? 'fused ' : ''}${a}·${b}`;
}

function summarise(calls, stepMs) {
  const byKernel = new Map();
  for (const call of calls) {
    const entry = byKernel.get(call.kernelName) ?? { kernel: call.kernelName, calls: 0, ms: 0, nestedCalls: 0 };
    entry.calls += 1;
    if (call.depth > 0) entry.nestedCalls += 1;
    entry.ms += call.selfMs;
    byKernel.set(call.kernelName, entry);
  }
  // Products called by the engine: their time includes whatever the kernel did to reach its fast
  // form (transposes, copies), which is the cost of that form.
  const byShape = new Map();
  let totalFlop = 0;
  for (const call of calls) {
    const flop = coreInternal.matMulFlops(call);
    if (flop === 0 || call.depth > 0) continue;
    totalFlop += flop;
    const key = productKey(call);
    const entry = byShape.get(key) ?? { product: key, calls: 0, ms: 0, flop: 0 };
    entry.calls += 1;
    entry.ms += call.totalMs;
    entry.flop += flop;
    byShape.set(key, entry);
  }
  const kernelMs = calls.reduce((sum, call) => sum + call.selfMs, 0);
  const kernels = [...byKernel.values()].sort((x, y) => y.ms - x.ms).map((entry) => ({ ...entry, ms: round(entry.ms), share: round(entry.ms / stepMs, 4) }));
  const products = [...byShape.values()]
    .sort((x, y) => y.ms - x.ms)
    .map((entry) => ({ ...entry, ms: round(entry.ms), gflops: round(entry.flop / entry.ms / 1e6), share: round(entry.ms / stepMs, 4) }));
  return {
    stepMs: round(stepMs),
    kernelCalls: calls.length,
    kernelMs: round(kernelMs),
    outsideKernelsMs: round(stepMs - kernelMs),
    totalFlop,
    gflops: round(totalFlop / stepMs / 1e6),
    kernels,
    products,
  };
}

function round(value, digits = 2) {
  return Number(value.toFixed(digits));
}

/** The calls of the recorded steps as one step: each call with its minimum time over the steps. */
function fastestCalls(steps) {
  const [first] = steps;
  if (steps.some((calls) => calls.length !== first.length || calls.some((call, i) => call.kernelName !== first[i].kernelName))) return null;
  return first.map((call, i) => ({
    ...call,
    selfMs: Math.min(...steps.map((calls) => calls[i].selfMs)),
    totalMs: Math.min(...steps.map((calls) => calls[i].totalMs)),
  }));
}

const repeat = Math.max(1, Number(values.repeat));
// Measured before and after the steps, and the faster taken: like each call's fastest time, the
// undisturbed rate (the first measurement alone ran before V8 had optimised the WASM code).
let reference = referenceGflops();
const profiles = [];
for (const variant of values.variants.split(',')) {
  let spy = null;
  const steps = [];
  const stepMs = [];
  await runVariant({
    variant,
    configName: values.config,
    steps: repeat + 1,
    onStepEnd: (step, ms) => {
      // Step 1 warms up (first-call allocations, XNNPACK packing); the next `repeat` are recorded.
      if (spy !== null) {
        spy.stop();
        steps.push(spy.calls);
        stepMs.push(ms);
      }
      spy = step <= repeat ? coreInternal.spyOnKernels(report.backend) : null;
    },
  });
  const fastest = fastestCalls(steps);
  // Steps that differ (a data-dependent path) are not merged: the fastest step stands alone.
  const quickest = stepMs.indexOf(Math.min(...stepMs));
  profiles.push({ variant, repeat, merged: fastest !== null, ...summarise(fastest ?? steps[quickest], Math.min(...stepMs)) });
}
reference = Math.max(reference, referenceGflops());
const config = CONFIGS[values.config];
process.stdout.write(
  `\n${JSON.stringify({
    backend: report.backend,
    backendKind: report.kind,
    threads: report.threads,
    kernelBuild: coreInternal.simdKernelBuild(tf.backend()),
    config: values.config,
    tokens: config.batchSize * config.seqLen,
    referenceGflops: round(reference),
    profiles,
  })}\n`,
);
