// The steps the bench measures on a model of one configuration: the forward pass with its loss
// (`forward`), a LoRA training step (`lora`) and a full fine-tuning step (`full`), each through
// the same code a user runs (`core.train` with AdamW for the training variants).
import { core, tf } from './packages.mjs';
import { CONFIGS, createModel, LORA_CONFIG, makeBatches } from './gpt2.mjs';

/** The variants, in the order the bench reports them. */
export const VARIANTS = ['forward', 'lora', 'full'];

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
    if (variant === 'lora') {
      core.AdapterModel.create(model, { registry: core.createLoraRegistry({ plugins: [core.lora({ seed: 3 })] }), config: LORA_CONFIG });
    } else if (variant === 'full') {
      model.setTrainable(true);
    } else {
      throw new Error(`Unknown variant "${variant}". Known: ${VARIANTS.join(', ')}.`);
    }
    let last = performance.now();
    await core.train({
      model,
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
