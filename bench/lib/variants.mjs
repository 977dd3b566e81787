// The steps the bench measures on a model of one configuration: the forward pass with its loss
// (`forward`), a LoRA training step (`lora`), a full fine-tuning step (`full`) and the other
// methods' steps (`dora`, `adalora`, `qlora`, set up as the comparison's rows are), each through
// the same code a user runs (`core.train` with AdamW for the training variants).
import { applyMethod } from '../comparison/measure.mjs';
import { loadVariantPackages, VARIANTS as METHODS } from '../comparison/variants.mjs';
import { core, tf } from './packages.mjs';
import { CONFIGS, createModel, LORA_CONFIG, makeBatches } from './gpt2.mjs';

/** The variants run by default, in the order the bench reports them. */
export const VARIANTS = ['forward', 'lora', 'full'];
/** Further methods the throughput section steps on the default backend (reported, not asserted). */
export const METHOD_VARIANTS = ['dora', 'adalora', 'qlora'];

/** A method's adapter on `model`, with LoRA's targets and r 8 (the comparison's settings). */
async function applyComparisonMethod(model, variant, steps) {
  const definition = METHODS.find((entry) => entry.variant === variant);
  const loaded = await loadVariantPackages(definition);
  if (loaded.missing) throw new Error(`${variant} needs ${loaded.missing}, which is not installed.`);
  // The method's schedule (AdaLoRA's budget phases) is sized for a run of at least 20 steps, of
  // which the bench times the first few: AdaLoRA refuses a schedule with no budget phase (tinit must
  // be below totalStep − tfinal), which a 2-step run would give.
  const context = { targetModules: LORA_CONFIG.targetModules, fanInFanOut: LORA_CONFIG.fanInFanOut, modulesToSave: undefined, steps: Math.max(steps, 20) };
  return applyMethod(model, definition, loaded.modules, { seed: 3, context }).adapterModel;
}

/**
 * Run `steps` steps of `variant` on a fresh model of `configName`; after each one call
 * `onStepEnd(step, ms)` (1-based step, its wall time) synchronously, before the next one starts.
 * Frees the model and batches afterwards.
 */
export async function runVariant({ variant, configName = 'small', steps, onStepEnd }) {
  const config = CONFIGS[configName];
  const model = createModel(configName);
  const batches = makeBatches(config, 2);
  const lossFn = (batch) => core.causalLmLoss(model.forward(batch.inputIds), batch.inputIds);
  try {
    if (variant === 'forward') {
      model.eval();
      for (let step = 1; step <= steps; step++) {
        const started = performance.now();
        tf.tidy(() => lossFn(batches[step % 2]).dataSync());
        onStepEnd(step, performance.now() - started);
      }
      return;
    }
    let trained = model;
    if (variant === 'lora') {
      core.AdapterModel.create(model, { registry: core.createLoraRegistry({ plugins: [core.lora({ seed: 3 })] }), config: LORA_CONFIG });
    } else if (variant === 'full') {
      model.setTrainable(true);
    } else if (METHOD_VARIANTS.includes(variant)) {
      // The AdapterModel brings its adapters' hooks (AdaLoRA's rank allocation) to train().
      trained = await applyComparisonMethod(model, variant, steps);
    } else {
      throw new Error(`Unknown variant "${variant}". Known: ${[...VARIANTS, ...METHOD_VARIANTS].join(', ')}.`);
    }
    let last = performance.now();
    await core.train({
      model: trained,
      trainData: batches,
      steps,
      learningRate: 1e-3,
      lossFn,
      onProgress: (progress) => {
        if (progress.kind !== 'step') return;
        onStepEnd(progress.step, performance.now() - last);
        last = performance.now();
      },
    });
  } finally {
    tf.dispose(batches.map((batch) => batch.inputIds));
    model.dispose();
  }
}
