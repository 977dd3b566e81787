// Dropout's cost on the WASM backend (a measurement, not a test; nothing asserts a timing).
//   node bench/dropout.mjs micro [--reps 15]   dropout forward + backward on [8, 128, 768], p 0.1:
//       the previous version's composite form (randomUniform, greaterEqual, cast, mul, mul), core's
//       fused kernel, and core's composite form (the mask computed in JS, as on other backends),
//       taking turns in one process
//   node bench/dropout.mjs lora [--pairs 15]   the bench's `small` LoRA step with loraDropout 0.05
//       and 0 on alternate steps of one run (run it in two checkouts to compare versions)
// Prints one JSON object on its last stdout line; progress goes to stderr.
import { parseArgs } from 'node:util';
import { median } from './lib/child.mjs';
import { CONFIGS, createModel, LORA_CONFIG, makeBatches } from './lib/gpt2.mjs';
import { core, tf } from './lib/packages.mjs';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { reps: { type: 'string', default: '15' }, pairs: { type: 'string', default: '15' } },
});

/** The previous version's dropout (core 0.x before the fused kernel), seeded as a training step seeds it. */
function previousDropout(x, p, seed) {
  return tf.tidy(() => {
    const keep = tf.tidy(() => tf.cast(tf.greaterEqual(tf.randomUniform(x.shape, 0, 1, 'float32', seed), p), 'float32'));
    return tf.mul(x, tf.mul(keep, 1 / (1 - p)));
  });
}

/**
 * Milliseconds of one forward + backward of `drop` on x with upstream gradient dy. WASM kernels run
 * synchronously, so no read-back is needed (one would add a 3 MB copy to every form).
 */
function timeForwardBackward(drop, x, dy) {
  const started = performance.now();
  tf.tidy(() => {
    tf.valueAndGrad((input) => drop(input))(x, dy);
  });
  return performance.now() - started;
}

async function micro() {
  await core.initRuntime({ backend: 'wasm' });
  const shape = [8, 128, 768];
  const p = 0.1;
  const x = tf.randomNormal(shape, 0, 1, 'float32', 1);
  const dy = tf.randomNormal(shape, 0, 1, 'float32', 2);
  const forms = [
    { name: 'previous composite', drop: (input) => previousDropout(input, p, 12345) },
    { name: 'fused kernel', drop: (input) => core.dropout(input, p, { seed: 12345 }) },
    {
      name: 'new composite (mask in JS)',
      // Without the kernel registered, dropout() runs the form every other backend runs.
      drop: (input) => core.dropout(input, p, { seed: 12345 }),
      before: () => tf.unregisterKernel('LoraDropout', 'wasm'),
      after: () => core.useFastWasmKernels('wasm'),
    },
  ];
  const times = new Map(forms.map((form) => [form.name, []]));
  const reps = Number(values.reps);
  for (let rep = -1; rep < reps; rep++) {
    for (const form of forms) {
      form.before?.();
      try {
        const ms = timeForwardBackward(form.drop, x, dy);
        if (rep >= 0) times.get(form.name).push(ms); // rep −1 warms up
      } finally {
        form.after?.();
      }
    }
  }
  tf.dispose([x, dy]);
  const previous = median(times.get('previous composite'));
  const rows = forms.map((form) => {
    const ms = median(times.get(form.name));
    return { form: form.name, medianMs: Number(ms.toFixed(2)), speedupOverPrevious: Number((previous / ms).toFixed(2)) };
  });
  for (const row of rows) console.error(`${row.form.padEnd(28)} ${row.medianMs} ms  ×${row.speedupOverPrevious} vs previous`);
  return { kind: 'dropout-micro', shape, p, reps, backend: tf.getBackend(), rows };
}

/**
 * The bench's `small` LoRA step (r 8 on attn.c_attn and attn.c_proj), with loraDropout 0.05 and 0
 * on alternate steps of one run (paired, so load from other processes hits both alike): the adapter
 * layers' `dropout` is switched between steps (a field of theirs, read-only to TypeScript only).
 */
async function lora() {
  await core.initRuntime({ backend: 'wasm' });
  const pairs = Number(values.pairs);
  const config = CONFIGS.small;
  const model = createModel('small');
  const batches = makeBatches(config, 2);
  const times = { 0: [], 0.05: [] };
  try {
    const adapterModel = core.AdapterModel.create(model, {
      registry: core.createLoraRegistry({ plugins: [core.lora({ seed: 3 })] }),
      config: { ...LORA_CONFIG, loraDropout: 0.05 },
    });
    const setDropout = (p) => {
      for (const [, instance] of adapterModel.adapterInstances('default')) instance.dropout = p;
    };
    // Steps 1 and 2 warm up (one of each); then 0.05 on odd steps, 0 on even ones.
    const dropoutOf = (step) => (step % 2 === 1 ? 0.05 : 0);
    setDropout(dropoutOf(1));
    let last = performance.now();
    await core.train({
      model: adapterModel,
      trainData: batches,
      steps: 2 + 2 * pairs,
      seed: 1,
      learningRate: 1e-3,
      lossFn: (batch) => core.causalLmLoss(model.forward(batch.inputIds), batch.inputIds),
      onProgress: (progress) => {
        if (progress.kind !== 'step') return;
        if (progress.step > 2) times[dropoutOf(progress.step)].push(performance.now() - last);
        setDropout(dropoutOf(progress.step + 1));
        last = performance.now();
      },
    });
  } finally {
    tf.dispose(batches.map((batch) => batch.inputIds));
    model.dispose();
  }
  const withDropout = median(times[0.05]);
  const without = median(times[0]);
  console.error(`loraDropout 0.05: ${withDropout.toFixed(1)} ms/step, 0: ${without.toFixed(1)} ms/step (medians of ${pairs})`);
  return {
    kind: 'dropout-lora-step',
    config: 'small',
    pairs,
    fusedDropoutKernel: core.fastWasmKernels('wasm').includes('LoraDropout'),
    stepMsDropout005: Number(withDropout.toFixed(1)),
    stepMsDropout0: Number(without.toFixed(1)),
    dropoutMsPerStep: Number((withDropout - without).toFixed(1)),
  };
}

const mode = positionals[0] ?? 'micro';
if (mode !== 'micro' && mode !== 'lora') throw new Error(`Unknown mode "${mode}": use micro or lora.`);
console.log(JSON.stringify(mode === 'micro' ? await micro() : await lora()));
