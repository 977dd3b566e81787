import * as tf from '@tensorflow/tfjs-core';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { SingleBar } from 'cli-progress';
import { AdapterModel, causalLmLoss, readCheckpointStep, saveAdapter, train, TrainingError, writeFileAtomic, writeJsonAtomic, type LoraRegistry } from '@lora/core';
import { deriveSeed, faultPoint } from '@lora/core/internal';
import {
  BUNDLED_BASE_PACKAGE,
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
import { loadModelDirectory } from './model-io.js';
import {
  adoptStaging,
  assertWritableOutput,
  cleanUpStale,
  commitStaging,
  createStaging,
  forgetStaging,
  readMarker,
  releaseStaging,
  resumableRuns,
} from './output-dir.js';
import type { VariantRecipe } from './recipe.js';
import { markdownReport, type TrainingReport } from './report.js';
import type { SelectorIo } from './select.js';

/** Options of a fine-tuning run. */
export interface TrainRunOptions {
  /** Hugging Face model directory, or null for the bundled base. */
  readonly modelDirectory: string | null;
  /** JSONL file with a `text` field per line, or null for the built-in corpus. */
  readonly dataFile: string | null;
  /** Where the finished run goes (`adapter/`, `report.json`, `report.md`, `run.json`); it is built in a staging directory beside it. */
  readonly outDirectory: string;
  /** Replace an existing output directory that lora wrote (default false). Others are never replaced. */
  readonly overwrite?: boolean;
  /** Total optimizer steps of the run (a resumed run continues from its checkpoint's step up to this). */
  readonly steps: number;
  /** Windows per step; also the batch size of the validation passes. */
  readonly batchSize: number;
  /** Tokens per training and validation window. */
  readonly contextLength: number;
  /** Peak AdamW learning rate: linear warm-up over the first 5% of steps, then cosine decay to 0 (CLI default 2e-3). */
  readonly learningRate: number;
  /** Seeds the train/validation split, the batch order, dropout and the samples (the adapter's initialisation is seeded by `registry`). */
  readonly seed: number;
  /** Checkpoint every this many steps (default: every 10% of the run). */
  readonly checkpointEvery?: number;
  /** Validation tokens evaluated before and after (default 8192). */
  readonly validationTokens?: number;
  /** Prompt for the before/after samples (language models). */
  readonly samplePrompt: string;
  /** The variant's recipe: adapter plugin, base transforms and camelCase options of the adapter to train. */
  readonly recipe: VariantRecipe;
  /** A registry holding the recipe's adapter and transform plugins (see `registryForRecipe`). */
  readonly registry: LoraRegistry;
  /** The flowchart's decision, saved in `run.json` and written to the report's `path`. */
  readonly decision: Decision;
  /** A description of the tensor backend, copied into the report as is. */
  readonly backend: string;
  /** Continue the stopped run in this staging directory (`lora train --resume`). */
  readonly resumeFrom?: string;
  /** Stops training at the next step (Ctrl-C / SIGTERM), keeping a checkpoint. */
  readonly signal?: AbortSignal;
}

/** The settings of a run, kept in its directory so `--resume` continues it exactly. */
export interface SavedRunSettings {
  readonly version: 1;
  readonly variant: string;
  readonly modelDirectory: string | null;
  readonly dataFile: string | null;
  readonly outDirectory: string;
  readonly steps: number;
  readonly batchSize: number;
  readonly contextLength: number;
  readonly learningRate: number;
  readonly seed: number;
  readonly checkpointEvery: number;
  readonly samplePrompt: string;
  readonly decision: Decision;
}

/** File of a run directory holding {@link SavedRunSettings}. */
export const RUN_SETTINGS_NAME = 'run.json';
const CHECKPOINT_DIRECTORY = 'checkpoint';

/** Exit code after Ctrl-C (SIGINT) and SIGTERM, as shells report a process those signals ended. */
export const SIGNAL_EXIT_CODES: Readonly<Record<string, number>> = { SIGINT: 130, SIGTERM: 143 };

/**
 * Whether a stopped run's directory can be resumed: it has its settings (a run killed before its
 * first checkpoint resumes from step 0, which gives the same result: everything is seeded) and any
 * checkpoint in it is readable.
 */
export async function isResumableRun(directory: string): Promise<boolean> {
  try {
    await fs.access(path.join(directory, RUN_SETTINGS_NAME));
    await readCheckpointStep(path.join(directory, CHECKPOINT_DIRECTORY));
    return true;
  } catch {
    return false;
  }
}

/** Read a stopped run's settings. @throws {CliError} exit 2 when the directory is not a resumable run. */
export async function readRunSettings(directory: string): Promise<SavedRunSettings & { checkpointStep: number | null }> {
  let settings: SavedRunSettings;
  try {
    settings = JSON.parse(await fs.readFile(path.join(directory, RUN_SETTINGS_NAME), 'utf8')) as SavedRunSettings;
  } catch {
    throw new CliError(`${directory} is not a lora training run (no readable ${RUN_SETTINGS_NAME}).`, { exitCode: 2 });
  }
  let checkpointStep: number | null;
  try {
    checkpointStep = await readCheckpointStep(path.join(directory, CHECKPOINT_DIRECTORY));
  } catch (error) {
    throw new CliError(`The checkpoint in ${directory} cannot be read: ${(error as Error).message.replace(/^\[[^\]]+\]\s*/u, '')}`, { exitCode: 2 });
  }
  return { ...settings, checkpointStep };
}

/**
 * Seeded training batches: every epoch visits the windows in its own order, fixed by the seed and
 * the epoch, so batch `i` is the same in a resumed run.
 */
export function shuffledBatches(windowsList: readonly number[][], batchSize: number, seed: number): { length: number; get(index: number): number[][] } {
  const perEpoch = Math.floor(windowsList.length / batchSize);
  const orders = new Map<number, number[]>();
  const orderOf = (epoch: number): number[] => {
    let order = orders.get(epoch);
    if (!order) {
      order = windowsList.map((_, i) => i);
      let state = deriveSeed(seed, 0x5eed, epoch);
      for (let i = order.length - 1; i > 0; i--) {
        state = deriveSeed(state, i);
        const j = state % (i + 1);
        [order[i], order[j]] = [order[j]!, order[i]!];
      }
      if (orders.size > 4) orders.clear();
      orders.set(epoch, order);
    }
    return order;
  };
  // `length` is large so the trainer's index never wraps to epoch 0; the epoch comes from the index.
  return {
    length: Number.MAX_SAFE_INTEGER,
    get(index: number) {
      const epoch = Math.floor(index / perEpoch);
      const start = (index % perEpoch) * batchSize;
      const order = orderOf(epoch);
      return order.slice(start, start + batchSize).map((i) => windowsList[i]!);
    },
  };
}

/**
 * What a trained adapter's `base_model_name_or_path` says: the bundled base's package, or the model
 * directory as an absolute path (the same whether the run was started or resumed, so a resumed run
 * saves the same config bytes).
 */
export function baseModelName(modelDirectory: string | null): string {
  return modelDirectory === null ? BUNDLED_BASE_PACKAGE : path.resolve(modelDirectory);
}

/** Load a causal LM and its tokenizer from a directory, or the bundled base. */
export async function loadLanguageModel(directory: string | null): Promise<{
  /** The loaded model; the caller disposes it. */
  model: CausalLanguageModel;
  /** The directory's tokenizer, or a byte tokenizer for the bundled base and for 257-token vocabularies without one. */
  tokenizer: TextTokenizer;
  /** How reports name the model: the directory as given, or a description of the bundled base. */
  name: string;
}> {
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

function oneLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).replace(/^\[[^\]]+\]\s*/u, '').split('\n')[0]!;
}

/**
 * Refuse a `--context` longer than the model's position table (GPT-2's `n_positions`) before any
 * directory is made or data read.
 * @throws {CliError} exit 2, naming the flag, the model's limit and where it comes from.
 */
export function assertContextFits(model: CausalLanguageModel, contextLength: number, modelDirectory: string | null): void {
  const limit = model.maxPositions;
  if (limit === null || contextLength <= limit) return;
  const source = modelDirectory === null ? 'the bundled base' : path.join(modelDirectory, 'config.json');
  throw new CliError(`--context ${contextLength} is longer than the model's ${limit} positions (n_positions in ${source}); pass --context ${limit} or less.`, { exitCode: 2 });
}

/**
 * Fine-tune with a recipe: evaluate validation loss and perplexity, train, evaluate again the same
 * way, sample before and after, and save the adapter (PEFT format) with report.json and report.md.
 *
 * The run lives in a staging directory beside `--out` (with its settings and a checkpoint every
 * `checkpointEvery` steps) until it is complete; then it replaces `--out` (see
 * `commitStaging` in output-dir.ts). Stopped by a signal, it keeps a checkpoint there and says how to resume;
 * diverged, it keeps the last good adapter there and exits non-zero. Nothing is ever written over
 * a directory lora did not create.
 */
export async function runTraining(options: TrainRunOptions, io: SelectorIo): Promise<TrainingReport> {
  const out = path.resolve(options.outDirectory);
  const checkpointEvery = options.checkpointEvery ?? Math.max(1, Math.round(options.steps / 10));
  if (!options.resumeFrom) {
    for (const note of await cleanUpStale(out, { isResumable: isResumableRun })) io.stdout.write(`lora: ${note}\n`);
    for (const run of await resumableRuns(out)) {
      if (await isResumableRun(run.path)) io.stdout.write(`lora: an earlier run for ${out} stopped (${run.marker.status}); continue it with: lora train --resume ${run.path}\n`);
    }
    await assertWritableOutput(out, { overwrite: options.overwrite });
  }
  const { model, tokenizer, name } = await loadLanguageModel(options.modelDirectory);
  let adapterModel: AdapterModel<CausalLanguageModel> | null = null;
  let staging: string | null = null;
  let keep = false;
  try {
    assertContextFits(model, options.contextLength, options.modelDirectory);
    const data = await loadTokenData(options.dataFile, tokenizer, {
      maxTrainTokens: Math.max(options.steps * options.batchSize * options.contextLength, options.batchSize * options.contextLength),
      maxValidationTokens: options.validationTokens ?? 8192,
      seed: options.seed,
    });
    const trainWindows = windows(data.trainIds, options.contextLength);
    if (trainWindows.length < options.batchSize) {
      throw new CliError(
        `The training split of ${data.description} is smaller than one batch: ${trainWindows.length} window(s) of ${options.contextLength} tokens for a batch of ${options.batchSize}. Add data or lower --batch-size / --context.`,
        { exitCode: 2 },
      );
    }
    if (data.validationIds.length < options.contextLength) {
      throw new CliError(`The validation split of ${data.description} has ${data.validationIds.length} tokens, fewer than one window of ${options.contextLength}. Add data or lower --context.`, { exitCode: 2 });
    }
    const batches = shuffledBatches(trainWindows, options.batchSize, options.seed);

    if (options.resumeFrom) {
      staging = options.resumeFrom;
      await adoptStaging(staging);
    } else {
      staging = await createStaging(out, 'train');
      const settings: SavedRunSettings = {
        version: 1,
        variant: options.recipe.variant,
        modelDirectory: options.modelDirectory === null ? null : path.resolve(options.modelDirectory),
        dataFile: options.dataFile === null ? null : path.resolve(options.dataFile),
        outDirectory: out,
        steps: options.steps,
        batchSize: options.batchSize,
        contextLength: options.contextLength,
        learningRate: options.learningRate,
        seed: options.seed,
        checkpointEvery,
        samplePrompt: options.samplePrompt,
        decision: options.decision,
      };
      await writeJsonAtomic(path.join(staging, RUN_SETTINGS_NAME), settings);
    }

    // The adapter (and a base transform such as QLoRA's 4-bit weights) is in place before the first
    // evaluation, so "before" and "after" measure the same model the same way; a fresh adapter is
    // the identity (B = 0).
    adapterModel = AdapterModel.create(model, {
      registry: options.registry,
      plugin: options.recipe.adapter,
      // PEFT records the base an adapter was trained on; the loaders name it when an adapter meets another model.
      config: { ...options.recipe.options, baseModelNameOrPath: baseModelName(options.modelDirectory) },
      transforms: options.recipe.transforms,
    });
    model.eval();
    const evaluate = () => evaluatePerplexity(model, data.validationIds, { contextLength: options.contextLength, batchSize: options.batchSize });
    const before = evaluate();
    io.stdout.write(`validation before: loss ${before.loss.toFixed(4)}, perplexity ${before.perplexity.toFixed(3)} (${before.tokens} tokens)\n`);
    const sampleBefore = sample(model, tokenizer, options.samplePrompt, options.seed);
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
        checkpoint: { directory: path.join(staging, CHECKPOINT_DIRECTORY), every: checkpointEvery },
        resume: true,
        seed: options.seed,
        signal: options.signal,
        onProgress: (event) => {
          if (event.kind === 'step') progress.update(event.step, event.loss, event.tokensPerSecond, event.etaMs);
        },
      });
    } catch (error) {
      if (!(error instanceof TrainingError) || error.reason === 'options') throw error;
      progress.stop();
      keep = true;
      if (error.reason === 'interrupted') {
        const exitCode = SIGNAL_EXIT_CODES[String(options.signal?.reason ?? 'SIGINT')] ?? 130;
        if (error.checkpointStep === null) {
          // Nothing worth resuming.
          forgetStaging(await readMarker(staging));
          await removeTree(staging);
          throw new CliError(`Interrupted before the first checkpoint; nothing was kept and ${out} was not written.`, { exitCode });
        }
        await releaseStaging(staging, 'interrupted');
        throw new CliError(
          `Interrupted at step ${error.checkpointStep}/${options.steps}; kept the checkpoint of step ${error.checkpointStep} in ${staging}. Resume with: lora train --resume ${staging}`,
          { exitCode },
        );
      }
      // Diverged: the model holds the last good state; keep it as an adapter beside the checkpoint.
      await saveAdapter(adapterModel, path.join(staging, 'adapter'));
      await releaseStaging(staging, 'diverged');
      // Core's advice names the library option; the CLI's names the flag (which a resumed run cannot change).
      const what = oneLine(error).replace(/ Lower the learning rate or check the data\.$/u, '');
      throw new CliError(`${what} Kept that adapter in ${path.join(staging, 'adapter')}; ${out} was not written. Start a new run with a lower --learning-rate (--resume keeps the run's own), or check the data.`, {
        exitCode: 1,
        cause: error,
      });
    } finally {
      progress.stop();
    }
    const seconds = (Date.now() - started) / 1000;
    model.eval();
    const after = evaluate();
    io.stdout.write(`validation after:  loss ${after.loss.toFixed(4)}, perplexity ${after.perplexity.toFixed(3)} (${after.tokens} tokens)\n`);
    if (!Number.isFinite(after.loss)) {
      keep = true;
      await saveAdapter(adapterModel, path.join(staging, 'adapter'));
      await releaseStaging(staging, 'diverged');
      throw new CliError(
        `The validation loss after training is ${after.loss}: the run diverged. Kept the adapter in ${path.join(staging, 'adapter')}; ${out} was not written. Try a lower --learning-rate.`,
      );
    }
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
      before: { validationLoss: before.loss, validationPerplexity: before.perplexity, tokens: before.tokens },
      after: { validationLoss: after.loss, validationPerplexity: after.perplexity, tokens: after.tokens },
      losses: result.losses,
      resumedFromStep: result.startStep,
      tokensPerSecond: ((options.steps - result.startStep) * options.batchSize * options.contextLength) / seconds,
      seconds,
      samples: { prompt: options.samplePrompt, before: sampleBefore, after: sampleAfter },
      path: options.decision.path.map((step) => ({ question: step.text, answer: step.answer, source: step.source, detail: step.detail })),
    };

    await saveAdapter(adapterModel, path.join(staging, 'adapter'));
    await writeJsonAtomic(path.join(staging, 'report.json'), report);
    await writeFileAtomic(path.join(staging, 'report.md'), markdownReport(report));
    // The finished run needs no checkpoint; run.json stays as the record of how it was made.
    await removeTree(path.join(staging, CHECKPOINT_DIRECTORY));
    await commitStaging(staging, out);
    staging = null;
    for (const run of await resumableRuns(out)) {
      // Superseded by this finished run.
      await removeTree(run.path);
      io.stdout.write(`lora: removed ${run.path}, an earlier stopped run superseded by this one\n`);
    }
    io.stdout.write(`\nSample before (prompt "${options.samplePrompt}"):\n${sampleBefore}\n\nSample after:\n${sampleAfter}\n\n`);
    io.stdout.write(`Saved the adapter (PEFT format) to ${path.join(out, 'adapter')} and the report to ${out}\n`);
    return report;
  } catch (error) {
    if (staging !== null && !keep) {
      // A checkpoint is worth keeping: the run can be resumed after the problem is fixed. Without
      // one (bad input found after the staging directory was made) there is nothing to resume.
      if ((await isResumableRun(staging)) && (await readCheckpointStep(path.join(staging, CHECKPOINT_DIRECTORY)).catch(() => null)) !== null) {
        await releaseStaging(staging, 'interrupted');
      } else {
        forgetStaging(await readMarker(staging));
        await removeTree(staging);
      }
    }
    throw error;
  } finally {
    if (adapterModel) adapterModel.dispose();
    else model.dispose();
  }
}

async function removeTree(directory: string): Promise<void> {
  faultPoint('remove', directory);
  await fs.rm(directory, { recursive: true, force: true });
}
