// The comparison rows on real data: every method adapts the bundled base to the State of the Union
// speeches (3 seeds; seed 0 also measures speed, memory and files), then, once, the same method
// with a classification head on a real labelled task.
import { core, models, tf } from '../lib/packages.mjs';
import {
  applyMethod,
  meanAndSpread,
  measureInference,
  measureStepPeak,
  parameterCounts,
  residentBytes,
  savedBytes,
  trainMethod,
} from './measure.mjs';

/** The attention projections of every GPT-2 block (Conv1D layout), as the selector adapts them. */
export const TARGET_MODULES = ['attn.c_attn', 'attn.c_proj'];

/** Learning rate of a row: the selector's 2e-3 for adapters; full fine-tuning, which moves every weight, 5e-4. */
export function learningRateOf(definition) {
  return definition.adapter === null ? 5e-4 : 2e-3;
}

function languageContext(settings) {
  return { targetModules: TARGET_MODULES, fanInFanOut: true, steps: settings.steps, conditions: { party: ['Democratic', 'Republican'] } };
}

/**
 * One language-modelling run of a method with one seed. With `measureAll`, also inference speed
 * (unmerged, merged, and the largest merged − unmerged logit difference), resident bytes, the saved
 * adapter's size and the peak bytes of one step.
 */
export async function runLanguageModelling({ definition, modules, settings, data, seed, measureAll }) {
  const { model } = await models.loadBundledBase();
  let adapterModel = null;
  try {
    ({ adapterModel } = applyMethod(model, definition, modules, { seed, context: languageContext(settings) }));
    const counts = parameterCounts(model, adapterModel);
    const { contextLength, batchSize } = settings;
    const lossFn = (batch) =>
      tf.tidy(() => {
        const ids = tf.tensor2d(batch, [batch.length, contextLength], 'int32');
        return core.causalLmLoss(model.forward(ids), ids);
      });
    const optimizer = new core.AdamW({ learningRate: learningRateOf(definition), weightDecay: 0 });
    try {
      const batches = data.batchesFor(seed);
      const trained = await trainMethod({
        model,
        adapterModel,
        lossFn,
        batches,
        steps: settings.steps,
        learningRate: learningRateOf(definition),
        optimizer,
        tokensPerBatch: batchSize * contextLength,
      });
      model.eval();
      const validation = models.evaluatePerplexity(model, data.validationIds, { contextLength, batchSize });
      if (!Number.isFinite(validation.loss)) throw new Error(`${definition.label} (seed ${seed}): validation loss is ${validation.loss}.`);
      const result = { counts, stepMs: trained.stepMs, valLoss: validation.loss, perplexity: validation.perplexity, finalTrainLoss: trained.losses.at(-1) };
      if (!measureAll) return result;

      const probe = models.causalLmWindows(data.validationIds, { contextLength }).slice(0, batchSize);
      const probeIds = tf.tensor2d(probe, [probe.length, contextLength], 'int32');
      let inference;
      try {
        inference = measureInference({ model, adapterModel, forward: () => model.forward(probeIds), tokens: probe.length * contextLength, reps: settings.inferenceReps });
      } finally {
        probeIds.dispose();
      }
      const resident = residentBytes(model, optimizer);
      const fileBytes = await savedBytes((directory) => (adapterModel ? core.saveAdapter(adapterModel, directory) : models.savePretrained(model, directory)));
      const peakBytes = await measureStepPeak({ model, adapterModel, lossFn, batch: batches[0], optimizer, outsideTensors: resident.outsideTensors });
      return { ...result, inference, resident, fileBytes, peakBytes };
    } finally {
      optimizer.dispose();
    }
  } finally {
    (adapterModel ?? model).dispose();
  }
}

/** A byte-level GPT-2 trunk with a linear head `score` on the mean hidden state (2 labels). */
class SequenceClassifier extends core.Module {
  /** Read by @lora/quant: the head stays float32, as transformers keeps a classifier head. */
  outputHeadPaths = ['score'];

  constructor(transformer, width, seed) {
    super();
    this.transformer = this.registerModule('transformer', transformer);
    this.score = this.registerModule('score', new core.Linear({ inFeatures: width, outFeatures: 2, seed }));
  }

  forward(ids) {
    return tf.tidy(() => this.score.forward(tf.mean(this.transformer.forward(ids), 1)));
  }
}

/** Accuracy of a method on the classification task (seed 0): the base's trunk, a new head, the method's adapter. */
export async function runClassification({ definition, modules, settings, data, seed }) {
  const { model: languageModel } = await models.loadBundledBase();
  // The LM head is tied to the token embedding, which the classifier keeps: nothing else to free.
  const model = new SequenceClassifier(languageModel.transformer, languageModel.config.nEmbd, 100 + seed);
  let adapterModel = null;
  try {
    const context = { targetModules: TARGET_MODULES, fanInFanOut: true, steps: settings.steps, modulesToSave: ['score'], conditions: { label: ['0', '1'] } };
    ({ adapterModel } = applyMethod(model, definition, modules, { seed, context }));
    const { length, batchSize, steps } = settings;
    const batches = Array.from({ length: steps }, (_, step) =>
      Array.from({ length: batchSize }, (_, row) => data.train[(step * batchSize + row) % data.train.length]),
    );
    const lossFn = (batch) =>
      tf.tidy(() => {
        const ids = tf.tensor2d(batch.map((example) => example.ids), [batch.length, length], 'int32');
        const labels = tf.tensor1d(batch.map((example) => example.label), 'int32');
        return core.classificationLoss(model.forward(ids), labels);
      });
    const optimizer = new core.AdamW({ learningRate: learningRateOf(definition), weightDecay: 0 });
    try {
      await trainMethod({ model, adapterModel, lossFn, batches, steps, learningRate: learningRateOf(definition), optimizer, tokensPerBatch: batchSize * length });
    } finally {
      optimizer.dispose();
    }
    model.eval();
    let correct = 0;
    for (let start = 0; start < data.test.length; start += batchSize) {
      const batch = data.test.slice(start, start + batchSize);
      const predicted = tf.tidy(() => tf.argMax(model.forward(tf.tensor2d(batch.map((example) => example.ids), [batch.length, length], 'int32')), 1).dataSync());
      batch.forEach((example, i) => (correct += predicted[i] === example.label ? 1 : 0));
    }
    return { accuracy: correct / data.test.length, testExamples: data.test.length };
  } finally {
    (adapterModel ?? model).dispose();
  }
}

/** The JSON row of a method from its seed runs (the first measured everything). */
export function comparisonRow({ definition, config, backend, runs, tokensPerStep }) {
  const [first] = runs;
  const losses = meanAndSpread(runs.map((run) => run.valLoss));
  return {
    variant: definition.variant,
    config,
    backend,
    trainableParams: first.counts.trainable,
    totalParams: first.counts.total,
    adapterFileBytes: first.fileBytes,
    baseWeightBytes: first.resident.base,
    peakBytes: first.peakBytes,
    optimizerStateBytes: first.resident.optimizerState,
    stepMs: first.stepMs,
    tokensPerSec: first.stepMs === null ? null : (tokensPerStep * 1000) / first.stepMs,
    inferenceTokensPerSecUnmerged: first.inference.unmergedTokensPerSec,
    inferenceTokensPerSecMerged: first.inference.mergedTokensPerSec,
    valLoss: losses.mean,
    valLossSpread: losses.spread,
  };
}
