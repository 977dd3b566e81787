import * as tf from '@tensorflow/tfjs-core';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { SingleBar } from 'cli-progress';
import { AdapterModel, causalLmLoss, saveAdapter, train, writeFileAtomic, writeJsonAtomic, type LoraRegistry } from '@lora/core';
import {
  ByteTokenizer,
  CausalLanguageModel,
  evaluatePerplexity,
  generate,
  loadBundledBase,
  loadTokenizer,
  type TextTokenizer,
} from '@lora/models';
import { CliError } from './errors.js';
import type { Decision } from './flowchart.js';
import { loadTokenData, windows } from './data.js';
import { loadModelDirectory, writeDirectoryAtomically } from './model-io.js';
import type { VariantRecipe } from './recipe.js';
import { markdownReport, type TrainingReport } from './report.js';
import type { SelectorIo } from './select.js';

/** Options of a fine-tuning run. */
export interface TrainRunOptions {
  /** Hugging Face model directory, or null for the bundled base. */
  readonly modelDirectory: string | null;
  /** JSONL file with a `text` field per line, or null for the built-in corpus. */
  readonly dataFile: string | null;
  readonly outDirectory: string;
  /** Replace an existing non-empty output directory (default false). */
  readonly overwrite?: boolean;
  readonly steps: number;
  readonly batchSize: number;
  readonly contextLength: number;
  readonly learningRate: number;
  readonly seed: number;
  /** Validation tokens evaluated before and after (default 8192). */
  readonly validationTokens?: number;
  /** Prompt for the before/after samples (language models). */
  readonly samplePrompt: string;
  readonly recipe: VariantRecipe;
  readonly registry: LoraRegistry;
  readonly decision: Decision;
  readonly backend: string;
}

async function directoryState(directory: string): Promise<'missing' | 'empty' | 'full'> {
  try {
    const entries = await fs.readdir(directory);
    return entries.length === 0 ? 'empty' : 'full';
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'missing';
    if ((error as NodeJS.ErrnoException).code === 'ENOTDIR') throw new CliError(`Output path ${directory} is a file, not a directory.`, { exitCode: 2 });
    throw error;
  }
}

/** Load a causal LM and its tokenizer from a directory, or the bundled base. */
export async function loadLanguageModel(directory: string | null): Promise<{ model: CausalLanguageModel; tokenizer: TextTokenizer; name: string }> {
  if (directory === null) {
    const { model, tokenizer } = await loadBundledBase();
    return { model, tokenizer, name: 'bundled base (GPT-2 architecture, byte vocabulary, pretrained on Moby-Dick)' };
  }
  const model = await loadModelDirectory(directory);
  if (!(model instanceof CausalLanguageModel)) {
    model.dispose();
    throw new CliError(`lora train fine-tunes causal language models (GPT-2, Llama); ${directory} holds a ${model.architecture}.`, { exitCode: 2 });
  }
  let tokenizer: TextTokenizer;
  try {
    tokenizer = await loadTokenizer(directory);
  } catch (error) {
    if (model.vocabSize !== 257) {
      model.dispose();
      throw new CliError(`No usable tokenizer in ${directory}: ${(error as Error).message}`, { exitCode: 2 });
    }
    tokenizer = new ByteTokenizer();
  }
  return { model, tokenizer, name: directory };
}

function sample(model: CausalLanguageModel, tokenizer: TextTokenizer, prompt: string, seed: number): string {
  const promptIds = tokenizer.encode(prompt);
  // Stay within the position table of models with learned positions.
  const room = model.maxPositions === null ? 80 : Math.max(0, Math.min(80, model.maxPositions - promptIds.length));
  const [tokens] = generate(model, [promptIds], { maxNewTokens: room, doSample: true, topK: 20, temperature: 0.8, seed });
  return tokenizer.decode(tokens!.slice(promptIds.length));
}

function progressReporter(io: SelectorIo, steps: number): { update(step: number, loss: number, tokensPerSecond: number | null, etaMs: number): void; stop(): void } {
  if (io.interactive) {
    const bar = new SingleBar(
      { format: 'train [{bar}] {value}/{total} | loss {loss} | {speed} tok/s | ETA {eta_formatted}', stream: io.stdout, hideCursor: true, etaBuffer: 20 },
    );
    bar.start(steps, 0, { loss: '-', speed: '-' });
    return {
      update: (step, loss, speed) => bar.update(step, { loss: loss.toFixed(3), speed: speed === null ? '-' : Math.round(speed).toLocaleString('en-US') }),
      stop: () => bar.stop(),
    };
  }
  // Without a terminal: a plain line every 10% of the run.
  const every = Math.max(1, Math.round(steps / 10));
  return {
    update: (step, loss, speed, etaMs) => {
      if (step % every === 0 || step === steps) {
        io.stdout.write(`train step ${step}/${steps} | loss ${loss.toFixed(3)} | ${speed === null ? '-' : Math.round(speed).toLocaleString('en-US')} tok/s | ETA ${Math.round(etaMs / 1000)}s\n`);
      }
    },
    stop: () => undefined,
  };
}

/**
 * Fine-tune with a recipe: evaluate validation perplexity, train, evaluate again, sample before and
 * after, and save the adapter (PEFT format) with report.json and report.md. Everything is written
 * into a temporary sibling directory that is renamed into place at the end, so a failed run leaves
 * no partial output directory.
 */
export async function runTraining(options: TrainRunOptions, io: SelectorIo): Promise<TrainingReport> {
  const out = path.resolve(options.outDirectory);
  const state = await directoryState(out);
  if (state === 'full' && !options.overwrite) {
    throw new CliError(`Output directory ${out} exists and is not empty; pass --overwrite or choose another --out.`, { exitCode: 2 });
  }
  const { model, tokenizer, name } = await loadLanguageModel(options.modelDirectory);
  let adapterModel: AdapterModel<CausalLanguageModel> | null = null;
  try {
    const data = await loadTokenData(options.dataFile, tokenizer, {
      maxTrainTokens: Math.max(options.steps * options.batchSize * options.contextLength, options.batchSize * options.contextLength),
      maxValidationTokens: options.validationTokens ?? 8192,
      seed: options.seed,
    });
    const trainWindows = windows(data.trainIds, options.contextLength);
    if (trainWindows.length < options.batchSize) {
      throw new CliError(
        `The dataset is smaller than one batch: ${trainWindows.length} window(s) of ${options.contextLength} tokens for a batch of ${options.batchSize}. Add data or lower --batch-size / --context.`,
        { exitCode: 2 },
      );
    }
    if (data.validationIds.length < options.contextLength) {
      throw new CliError(`The validation split has ${data.validationIds.length} tokens, fewer than one window of ${options.contextLength}. Add data.`, { exitCode: 2 });
    }
    const batches: number[][][] = [];
    for (let start = 0; start + options.batchSize <= trainWindows.length; start += options.batchSize) {
      batches.push(trainWindows.slice(start, start + options.batchSize));
    }

    model.eval();
    const evaluate = () => evaluatePerplexity(model, data.validationIds, { contextLength: options.contextLength, batchSize: options.batchSize });
    const before = evaluate();
    io.stdout.write(`validation before: loss ${before.loss.toFixed(4)}, perplexity ${before.perplexity.toFixed(3)} (${before.tokens} tokens)\n`);
    const sampleBefore = sample(model, tokenizer, options.samplePrompt, options.seed);

    adapterModel = AdapterModel.create(model, {
      registry: options.registry,
      plugin: options.recipe.adapter,
      config: options.recipe.options,
      transforms: options.recipe.transforms,
    });
    const parameters = adapterModel.trainableParameters().line;
    io.stdout.write(`${parameters}\n`);
    const progress = progressReporter(io, options.steps);
    const started = Date.now();
    const lossFn = (batch: number[][]) =>
      tf.tidy(() => {
        const ids = tf.tensor2d(batch, [batch.length, options.contextLength], 'int32');
        return causalLmLoss(model.forward(ids), ids);
      });
    let result;
    try {
      result = await train({
        model,
        lossFn,
        trainData: batches,
        steps: options.steps,
        learningRate: options.learningRate,
        warmupSteps: Math.max(1, Math.round(options.steps * 0.05)),
        schedule: 'cosine',
        hooks: adapterModel.trainingHooks(),
        tokensPerBatch: options.batchSize * options.contextLength,
        onProgress: (event) => {
          if (event.kind === 'step') progress.update(event.step, event.loss, event.tokensPerSecond, event.etaMs);
        },
      });
    } finally {
      progress.stop();
    }
    const seconds = (Date.now() - started) / 1000;
    model.eval();
    const after = evaluate();
    io.stdout.write(`validation after:  loss ${after.loss.toFixed(4)}, perplexity ${after.perplexity.toFixed(3)}\n`);
    const sampleAfter = sample(model, tokenizer, options.samplePrompt, options.seed);

    const report: TrainingReport = {
      variant: options.recipe.variant,
      recipe: { adapter: options.recipe.adapter, transforms: options.recipe.transforms, config: { ...adapterModel.registry.adapter(options.recipe.adapter).toPeftJson(adapterModel.adapterConfig('default').config) } },
      model: name,
      data: data.description,
      backend: options.backend,
      steps: options.steps,
      batchSize: options.batchSize,
      contextLength: options.contextLength,
      trainableParameters: parameters,
      before: { validationLoss: before.loss, validationPerplexity: before.perplexity },
      after: { validationLoss: after.loss, validationPerplexity: after.perplexity },
      losses: result.losses,
      tokensPerSecond: (options.steps * options.batchSize * options.contextLength) / seconds,
      seconds,
      samples: { prompt: options.samplePrompt, before: sampleBefore, after: sampleAfter },
      path: options.decision.path.map((step) => ({ question: step.text, answer: step.answer, source: step.source, detail: step.detail })),
    };

    // Checked for emptiness above; the helper writes a sibling directory and renames it into place.
    await writeDirectoryAtomically(
      out,
      async (staging) => {
        await saveAdapter(adapterModel!, path.join(staging, 'adapter'));
        await writeJsonAtomic(path.join(staging, 'report.json'), report);
        await writeFileAtomic(path.join(staging, 'report.md'), markdownReport(report));
      },
      { overwrite: true },
    );
    io.stdout.write(`\nSample before (prompt "${options.samplePrompt}"):\n${sampleBefore}\n\nSample after:\n${sampleAfter}\n\n`);
    io.stdout.write(`Saved the adapter (PEFT format) and report to ${out}\n`);
    return report;
  } finally {
    if (adapterModel) adapterModel.dispose();
    else model.dispose();
  }
}
