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
  withCondition,
} from './measure.mjs';
import { LANGUAGE_CONDITIONS } from './data.mjs';

/** The attention projections of every GPT-2 block (Conv1D layout), as the selector adapts them. */
export const TARGET_MODULES = ['attn.c_attn', 'attn.c_proj'];

/** Learning rate of a row: the selector's 2e-3 for adapters; full fine-tuning, which moves every weight, 5e-4. */
export function learningRateOf(definition) {
  return definition.adapter === null ? 5e-4 : 2e-3;
}

function languageContext(settings) {
  return { targetModules: TARGET_MODULES, fanInFanOut: true, steps: settings.steps, conditionFactors: LANGUAGE_CONDITIONS.factors };
}

/**
 * Windows per forward pass when evaluating: larger than a training batch, since no gradients are
 * kept; the loss is a mean over all windows whatever the batch, so this changes only the time.
 */
const EVAL_BATCH = 16;

/**
 * Validation loss of every condition's held-out stream (each through its own condition; methods
 * without conditions ignore it) and the loss over all of them, weighted by predicted tokens.
 */
function validationByCondition({ model, adapterModel, definition, data, settings }) {
  const byCondition = {};
  let total = 0;
  let tokens = 0;
  for (const entry of data.validation) {
    const result = withCondition(definition, adapterModel, entry.condition, () =>
      models.evaluatePerplexity(model, entry.ids, { contextLength: settings.contextLength, batchSize: EVAL_BATCH }),
    );
    if (!Number.isFinite(result.loss)) throw new Error(`${definition.label}: validation loss on ${entry.label} is ${result.loss}.`);
    byCondition[entry.label] = result.loss;
    total += result.loss * result.tokens;
    tokens += result.tokens;
  }
  const loss = total / tokens;
  return { loss, perplexity: Math.exp(loss), byCondition, heldOut: byCondition[data.validation.find((entry) => entry.heldOut).label] };
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
    // Batches are `{ ids, condition }` windows; HyperLoRA gets one condition per row.
    const lossFn = (batch) =>
      tf.tidy(() => {
        const ids = tf.tensor2d(batch.map((window) => window.ids), [batch.length, contextLength], 'int32');
        return withCondition(definition, adapterModel, batch.map((window) => window.condition), () => core.causalLmLoss(model.forward(ids), ids));
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
      const validation = validationByCondition({ model, adapterModel, definition, data, settings });
      const result = {
        counts,
        stepMs: trained.stepMs,
        valLoss: validation.loss,
        perplexity: validation.perplexity,
        valLossByCondition: validation.byCondition,
        valLossHeldOut: validation.heldOut,
        finalTrainLoss: trained.losses.at(-1),
      };
      if (!measureAll) return result;

      // One window of each condition in turn: a mixed-condition batch for HyperLoRA.
      const windows = data.validation.map((entry) => models.causalLmWindows(entry.ids, { contextLength }));
      const probe = Array.from({ length: batchSize }, (_, row) => ({
        ids: windows[row % windows.length][Math.floor(row / windows.length)],
        condition: data.validation[row % windows.length].condition,
      }));
      const probeIds = tf.tensor2d(probe.map((window) => window.ids), [probe.length, contextLength], 'int32');
      const probeConditions = probe.map((window) => window.condition);
      let inference;
      try {
        inference = measureInference({
          model,
          adapterModel,
          forward: () => withCondition(definition, adapterModel, probeConditions, () => model.forward(probeIds)),
          tokens: probe.length * contextLength,
          reps: settings.inferenceReps,
          merges: definition.merges !== false,
        });
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

/** The classification task's single condition (HyperLoRA then generates one adapter, like a LoRA's). */
const CLASSIFICATION_CONDITION = { factors: [{ name: 'task', values: ['classify'] }], task: { task: 'classify' } };

/** Accuracy of a method on the classification task (seed 0): the base's trunk, a new head, the method's adapter. */
export async function runClassification({ definition, modules, settings, data, seed }) {
  const { model: languageModel } = await models.loadBundledBase();
  // The LM head is tied to the token embedding, which the classifier keeps: nothing else to free.
  const model = new SequenceClassifier(languageModel.transformer, languageModel.config.nEmbd, 100 + seed);
  let adapterModel = null;
  try {
    // One task: every example gets the same condition (conditioning on the label would leak it).
    const context = { targetModules: TARGET_MODULES, fanInFanOut: true, steps: settings.steps, modulesToSave: ['score'], conditionFactors: CLASSIFICATION_CONDITION.factors };
    ({ adapterModel } = applyMethod(model, definition, modules, { seed, context }));
    const { length, batchSize, steps } = settings;
    const batches = Array.from({ length: steps }, (_, step) =>
      Array.from({ length: batchSize }, (_, row) => data.train[(step * batchSize + row) % data.train.length]),
    );
    const lossFn = (batch) =>
      tf.tidy(() => {
        const ids = tf.tensor2d(batch.map((example) => example.ids), [batch.length, length], 'int32');
        const labels = tf.tensor1d(batch.map((example) => example.label), 'int32');
        return withCondition(definition, adapterModel, CLASSIFICATION_CONDITION.task, () => core.classificationLoss(model.forward(ids), labels));
      });
    const optimizer = new core.AdamW({ learningRate: learningRateOf(definition), weightDecay: 0 });
    try {
      await trainMethod({ model, adapterModel, lossFn, batches, steps, learningRate: learningRateOf(definition), optimizer, tokensPerBatch: batchSize * length });
    } finally {
      optimizer.dispose();
    }
    model.eval();
    let correct = 0;
    for (let start = 0; start < data.test.length; start += EVAL_BATCH) {
      const batch = data.test.slice(start, start + EVAL_BATCH);
      const predicted = tf.tidy(() =>
        withCondition(definition, adapterModel, CLASSIFICATION_CONDITION.task, () => tf.argMax(model.forward(tf.tensor2d(batch.map((example) => example.ids), [batch.length, length], 'int32')), 1).dataSync()),
      );
      batch.forEach((example, i) => (correct += predicted[i] === example.label ? 1 : 0));
    }
    return { accuracy: correct / data.test.length, testExamples: data.test.length };
  } finally {
    (adapterModel ?? model).dispose();
  }
}

/**
 * The JSON row of a method from its seed runs (the first measured everything). Beyond the issue's
 * fields: `valLossByCondition` (condition label → mean validation loss over the seeds) and
 * `valLossHeldOut` (the same for the condition held out of training), for every method: HyperLoRA
 * is given each condition, the others see the same text without it.
 */
export function comparisonRow({ definition, config, backend, runs, tokensPerStep }) {
  const [first] = runs;
  const losses = meanAndSpread(runs.map((run) => run.valLoss));
  const meanOf = (values) => meanAndSpread(values).mean;
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
    valLossByCondition: Object.fromEntries(Object.keys(first.valLossByCondition).map((label) => [label, meanOf(runs.map((run) => run.valLossByCondition[label]))])),
    valLossHeldOut: meanOf(runs.map((run) => run.valLossHeldOut)),
  };
}
