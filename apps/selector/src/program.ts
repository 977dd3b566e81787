import { promises as fs } from 'node:fs';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { holdsNonFloatWeight, initRuntime, LoraError, NonFiniteTensorError, writeJsonAtomic } from '@lora/core';
import { pathExists } from '@lora/core/internal';
import { bundledBaseDirectory, CausalLanguageModel, generate, loadTokenizer, ByteTokenizer, savePretrained } from '@lora/models';
import { readSelectorConfig, unaskedFlagsNote, type FlowchartFlags, type SelectorConfig } from './answers.js';
import { variantName } from './flowchart.js';
import { CliError, MissingPackageError } from './errors.js';
import { inspectDirectory, formatInspection } from './inspect.js';
import { parseByteSize } from './measure.js';
import { checkForwardInputFits, copyCompanionFiles, forwardLogits, loadModelWithAdapters, readForwardInput, refuseQuantizedModel } from './model-io.js';
import { readMarker, resumableRuns, writeDirectoryAtomically } from './output-dir.js';
import { assertWritableLogitsFile } from './output-file.js';
import { extraPluginPackages, importPackage, registryForRecipe, type PackageLoader } from './plugins.js';
import { recipeFor, recipePackageFor } from './recipe.js';
import { assertInstalled, formatSelection, select, type SelectorIo } from './select.js';
import { isResumableRun, readRunSettings, runTraining } from './train-run.js';
import { checkConditionFor, conditionNote, exportHyperCondition, parseConditionFlag, refuseHyperMerge, runHyperTraining } from './hyper-run.js';

/** Where the CLI reads and writes, plus an injectable package loader (tests simulate missing packages). */
export interface ProgramContext extends SelectorIo {
  /** Imports plugin and backend packages by name (default {@link importPackage}). */
  readonly loader?: PackageLoader;
}

// Targets per architecture (GPT-2's attention c_attn and c_proj, as in the benchmark's `small` config).
const TARGETS_BY_MODEL_TYPE: Readonly<Record<string, readonly string[]>> = {
  gpt2: ['c_attn', 'c_proj'],
  llama: ['q_proj', 'v_proj'],
  bert: ['query', 'value'],
};

async function modelType(directory: string): Promise<string> {
  try {
    const config = JSON.parse(await fs.readFile(path.join(directory, 'config.json'), 'utf8')) as { model_type?: unknown };
    return typeof config.model_type === 'string' ? config.model_type : 'unknown';
  } catch {
    throw new CliError(`Model directory ${directory} has no readable config.json (expected a Hugging Face model directory).`, { exitCode: 2 });
  }
}

/** `--plugin <package>` (repeatable): a third-party plugin package whose `pluginPackage` descriptor reads its adapters. */
function pluginOption(): Option {
  return new Option('--plugin <package>', 'also load plugins from this package (repeatable; or LORA_PLUGINS=a,b)')
    .argParser((value: string, previous: string[] = []) => [...previous, value])
    .default([] as string[]);
}

/** An option parser that accepts integers in [min, max] and names the option otherwise. */
function integerOption(name: string, options: { min?: number; max?: number } = {}) {
  const min = options.min ?? 1;
  const max = options.max ?? Number.MAX_SAFE_INTEGER;
  return (value: string): number => {
    const parsed = /^[+-]?\d+$/u.test(value.trim()) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(parsed) || parsed < min || parsed > max) {
      throw new InvalidArgumentError(`${name} must be an integer ${max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `from ${min} to ${max}`}, got "${value}".`);
    }
    return parsed;
  };
}

/** An option parser that accepts finite numbers > 0 (and <= max) and names the option otherwise. */
function positiveNumber(name: string, options: { max?: number } = {}) {
  return (value: string): number => {
    const parsed = value.trim() === '' ? Number.NaN : Number(value);
    if (!Number.isFinite(parsed) || parsed <= 0 || (options.max !== undefined && parsed > options.max)) {
      throw new InvalidArgumentError(`${name} must be a finite number > 0${options.max === undefined ? '' : ` and <= ${options.max}`}, got "${value}".`);
    }
    return parsed;
  };
}

const positiveInteger = (name: string) => integerOption(name, { min: 1 });
const seedOption = () => integerOption('--seed', { min: 0, max: 2 ** 32 - 1 });

/** This CLI's version, from its package.json (next to src/ and dist/ alike). */
function cliVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

interface SelectCommandOptions extends FlowchartFlags {
  readonly memoryBudget?: string;
  readonly config?: string;
  readonly model?: string;
  readonly json?: boolean;
  readonly run?: boolean;
  readonly data?: string;
  readonly steps: number;
  readonly batchSize: number;
  readonly context: number;
  readonly learningRate: number;
  readonly seed: number;
  readonly out?: string;
  readonly overwrite?: boolean;
  readonly prompt: string;
  readonly checkpointEvery?: number;
  readonly resume?: string;
}

function addSelectOptions(command: Command): Command {
  return command
    .addOption(new Option('--memory <level>', 'memory limits: extreme | limited | ample').choices(['extreme', 'limited', 'ample']))
    .option('--multi-task', 'multi-task capability is needed')
    .option('--no-multi-task', 'multi-task capability is not needed')
    .option('--dynamic', 'dynamic adaptation is needed')
    .option('--no-dynamic', 'dynamic adaptation is not needed')
    .addOption(new Option('--compute <level>', 'computational resources: substantial | limited').choices(['substantial', 'limited']))
    .option('--expressive', 'increased expressiveness is needed')
    .option('--no-expressive', 'increased expressiveness is not needed')
    .option('--memory-budget <size>', 'memory available for training, e.g. 6GiB or 512MB (default: free system memory)')
    .option('--config <file>', 'answers and settings from a JSON file (flags win)')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled base)')
    .option('--data <file.jsonl>', 'training texts, one {"text": …} per line; for HyperLoRA {"text": …, "condition": {"factor": "value"}} (default: State of the Union speeches)')
    .option('--steps <n>', 'training steps', positiveInteger('--steps'), 300)
    .option('--batch-size <n>', 'sequences per step', positiveInteger('--batch-size'), 8)
    .option('--context <n>', 'tokens per sequence (at least 2; at most the model\'s positions)', integerOption('--context', { min: 2 }), 128)
    .option('--learning-rate <lr>', 'peak learning rate (finite, > 0)', positiveNumber('--learning-rate'), 2e-3)
    .option('--seed <n>', 'seed for the data split and order, adapter initialisation, dropout and sampling', seedOption(), 0)
    .option('--out <dir>', 'output directory for the adapter and report (default: lora-runs/<variant>, replaced by each run)')
    .option('--overwrite', 'replace an output directory an earlier lora run wrote (never one with other files)')
    .option('--checkpoint-every <n>', 'checkpoint every n steps (default: every 10% of the run)', positiveInteger('--checkpoint-every'))
    .option('--prompt <text>', 'prompt for before/after samples', 'The state of our Union is')
    .option('--json', 'print a machine-readable result');
}

const ALLOW_NON_FINITE = 'load weights holding NaN or Infinity instead of refusing them';

/** The backend for this run: @lora/cuda-backend's pick when installed (GPU, native, threaded WASM), else core's default. */
async function startBackend(loader: PackageLoader): Promise<{ name: string; gpu: boolean; description: string }> {
  let cudaBackend: Record<string, unknown> | null = null;
  try {
    cudaBackend = (await loader('@lora/cuda-backend')) as Record<string, unknown>;
  } catch {
    cudaBackend = null;
  }
  if (cudaBackend && typeof cudaBackend['useBestBackend'] === 'function') {
    const report = (await (cudaBackend['useBestBackend'] as () => Promise<{ kind: string; gpu: boolean; description: string; threads: number }>)());
    return { name: report.kind, gpu: report.gpu, description: `${report.kind} (${report.threads} thread${report.threads === 1 ? '' : 's'}): ${report.description}` };
  }
  const runtime = await initRuntime();
  return { name: runtime.backend, gpu: false, description: `${runtime.backend}: ${runtime.reason}` };
}

/** Run `fn` with Ctrl-C and SIGTERM turned into an abort of `controller` (once; a second signal ends the process as usual). */
async function withSignals<T>(fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const handlers = (['SIGINT', 'SIGTERM'] as const).map((name) => {
    const handler = () => controller.abort(name);
    process.once(name, handler);
    return [name, handler] as const;
  });
  try {
    return await fn(controller.signal);
  } finally {
    for (const [name, handler] of handlers) process.removeListener(name, handler);
  }
}

/** Where a `--resume` argument points: a stopped run's staging directory, or the `--out` it was for. */
async function resolveResume(directory: string): Promise<string> {
  const marker = await readMarker(directory);
  if (marker?.kind === 'train' && marker.status !== 'complete' && (await isResumableRun(directory))) return path.resolve(directory);
  const runs = [];
  for (const run of await resumableRuns(directory)) if (await isResumableRun(run.path)) runs.push(run);
  if (runs.length === 0) {
    throw new CliError(
      marker?.status === 'complete'
        ? `${directory} is a finished run; there is nothing to resume.`
        : `No stopped lora training run to resume in or beside ${directory}.`,
      { exitCode: 2 },
    );
  }
  runs.sort((a, b) => b.marker.created.localeCompare(a.marker.created));
  return runs[0]!.path;
}

async function runSelect(options: SelectCommandOptions, command: Command, context: ProgramContext, runAfter: boolean): Promise<void> {
  // With --json, stdout carries exactly one JSON document; everything for people goes to stderr.
  const io: SelectorIo = options.json ? { ...context, stdout: context.stderr } : context;
  const given = (key: string) => command.getOptionValueSource(key) === 'cli' || command.getOptionValueSource(key) === 'env';
  // The flag as the user types it, from commander's own option list.
  const flagOf = (key: string) => command.options.find((option) => option.attributeName() === key)?.long ?? key;
  const loader = context.loader ?? importPackage;
  if (options.resume !== undefined) {
    const allowed = new Set(['resume', 'json']);
    const extra = command.options.map((option) => option.attributeName()).filter((key) => given(key) && !allowed.has(key));
    if (extra.length > 0) throw new CliError(`--resume continues a run with its own settings; drop ${extra.map(flagOf).join(', ')}.`, { exitCode: 2 });
    const staging = await resolveResume(options.resume);
    const settings = await readRunSettings(staging);
    const backend = await startBackend(loader);
    io.stdout.write(`backend: ${backend.description}\n`);
    io.stdout.write(`resuming ${staging} from step ${settings.checkpointStep ?? 0}/${settings.steps}\n`);
    const type = await modelType(settings.modelDirectory ?? bundledBaseDirectory());
    const recipe = recipeFor(settings.variant as Parameters<typeof recipeFor>[0], {
      targetModules: TARGETS_BY_MODEL_TYPE[type] ?? ['q_proj', 'v_proj'],
      fanInFanOut: type === 'gpt2',
      steps: settings.steps,
      taskType: 'CAUSAL_LM',
    });
    const registry = await registryForRecipe(recipe, loader, { seed: settings.seed });
    const report = await withSignals((signal) =>
      runTraining({ ...settings, outDirectory: settings.outDirectory, recipe, registry, backend: backend.description, resumeFrom: staging, signal }, io),
    );
    finishTraining(report, settings.outDirectory, options, context, io, null);
    return;
  }
  const config: SelectorConfig | undefined = options.config ? await readSelectorConfig(options.config) : undefined;
  const budgetText = options.memoryBudget ?? (config?.memoryBudget === undefined ? undefined : String(config.memoryBudget));
  const memoryBudgetBytes = budgetText === undefined ? null : parseByteSize(budgetText);
  if (budgetText !== undefined && memoryBudgetBytes === null) {
    const where = options.memoryBudget !== undefined ? '--memory-budget' : `${options.config}: memoryBudget`;
    const fix = options.memoryBudget !== undefined ? '' : ' Fix the file, or pass --memory-budget.';
    throw new CliError(`${where} must be a positive number of bytes or a size like 6GiB / 512MB, got "${budgetText}".${fix}`, { exitCode: 2 });
  }
  // The backend comes first: it is what the memory and compute answers below are measured on.
  const backend = await startBackend(loader);
  io.stdout.write(`backend: ${backend.description}\n`);
  const modelDirectory = options.model ?? config?.model ?? null;
  const directory = modelDirectory ?? bundledBaseDirectory();
  const type = await modelType(directory);
  // Flags win over the config file: a flag given on the command line, even at its default value.
  const steps = !given('steps') && config?.steps !== undefined ? config.steps : options.steps;
  const { result, recipe, decision } = await select(
    {
      memory: options.memory,
      multiTask: options.multiTask,
      dynamic: options.dynamic,
      compute: options.compute,
      expressive: options.expressive,
      config,
      modelDirectory: directory,
      memoryBudgetBytes,
      training: { batchSize: options.batchSize, sequenceLength: options.context, rank: 8, steps },
      backend: { name: backend.name, gpu: backend.gpu },
      targetModules: TARGETS_BY_MODEL_TYPE[type] ?? ['q_proj', 'v_proj'],
      fanInFanOut: type === 'gpt2',
      loader: context.loader,
    },
    io,
  );
  if (options.json && !runAfter) context.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else io.stdout.write(`${formatSelection(result, decision)}\n\n`);
  // An answer the path never asked for changed nothing: say so rather than ignore it silently.
  const unasked = unaskedFlagsNote(result.unaskedFlags, variantName(result.variant));
  if (unasked) context.stderr.write(`lora: note: ${unasked}.\n`);
  // --memory-budget only feeds the measured memory answer: a flag or the config file answered it instead.
  const memoryStep = result.path.find((step) => step.question === 'memoryExtreme');
  if (options.memoryBudget !== undefined && (memoryStep?.source === 'flag' || memoryStep?.source === 'config')) {
    const answeredBy = memoryStep.source === 'flag' ? `--memory ${options.memory}` : `${options.config}'s memory`;
    context.stderr.write(`lora: note: --memory-budget did not affect the choice of ${variantName(result.variant)}: ${answeredBy} answered the memory question, so nothing was measured.\n`);
  }
  if (!runAfter) {
    // The training settings only matter to the run: say so rather than accept them silently.
    const unused = ['data', 'batchSize', 'learningRate', 'seed', 'out', 'overwrite', 'checkpointEvery', 'prompt'].filter(given);
    if (unused.length > 0) context.stderr.write(`lora: note: ${unused.map(flagOf).join(', ')} only apply to training; add --run to train with them.\n`);
    return;
  }
  assertInstalled(result);
  const registry = await registryForRecipe(recipe, loader, { seed: options.seed });
  const outDirectory = options.out ?? config?.out ?? path.join('lora-runs', result.variant);
  // The default directory is lora's own: re-running replaces the previous run there.
  const overwrite = options.overwrite || (options.out === undefined && config?.out === undefined);
  const run = {
    modelDirectory,
    dataFile: options.data ?? config?.data ?? null,
    outDirectory,
    overwrite,
    steps,
    batchSize: options.batchSize,
    contextLength: options.context,
    learningRate: options.learningRate,
    seed: options.seed,
    recipe,
    registry,
  };
  if (recipe.adapter === 'hyper') {
    // HyperLoRA trains on conditioned texts and reports per condition: its own run (hyper-run.ts).
    const report = await runHyperTraining({ ...run, loader }, io);
    if (options.json) {
      const out = path.resolve(outDirectory);
      context.stdout.write(`${JSON.stringify({ ...result, out, adapter: out, report })}\n`);
    }
    return;
  }
  const report = await withSignals((signal) =>
    runTraining({ ...run, checkpointEvery: options.checkpointEvery, samplePrompt: options.prompt, decision, backend: backend.description, signal }, io),
  );
  finishTraining(report, outDirectory, options, context, io, result);
}

function finishTraining(
  report: Awaited<ReturnType<typeof runTraining>>,
  outDirectory: string,
  options: SelectCommandOptions,
  context: ProgramContext,
  io: SelectorIo,
  selection: object | null,
): void {
  const ratio = report.after.validationPerplexity / report.before.validationPerplexity - 1;
  const change = `${ratio > 0 ? '+' : ''}${(ratio * 100).toFixed(1)}`;
  io.stdout.write(
    `Validation perplexity ${report.before.validationPerplexity.toFixed(3)} → ${report.after.validationPerplexity.toFixed(3)} (${change}%) with ${report.variant} in ${report.seconds.toFixed(0)} s.\n`,
  );
  // Finite, so kept; but a run that made the model worse should not read as a success.
  if (ratio > 0) context.stderr.write(`lora: warning: validation perplexity rose ${(ratio * 100).toFixed(1)}% over the run; the adapter is saved, but try a lower --learning-rate or more data.\n`);
  if (options.json) {
    const out = path.resolve(outDirectory);
    context.stdout.write(`${JSON.stringify({ ...(selection ?? { variant: report.variant }), out, adapter: path.join(out, 'adapter'), report: { before: report.before, after: report.after, resumedFromStep: report.resumedFromStep } })}\n`);
  }
}

/**
 * How many tokens `lora generate` asks for: `--max-new-tokens`, or, left at its default, as many as
 * the model's positions leave after the prompt.
 * @throws {CliError} exit 2 when the prompt leaves no room, or an explicit `--max-new-tokens` does not fit.
 */
function newTokensThatFit(maxPositions: number | null, promptLength: number, asked: number, isDefault: boolean): number {
  if (maxPositions === null || promptLength + asked <= maxPositions) return asked;
  const room = maxPositions - promptLength;
  if (room <= 0) throw new CliError(`--prompt is ${promptLength} tokens, which fill the model's ${maxPositions} positions; shorten it to at most ${maxPositions - 1}.`, { exitCode: 2 });
  if (isDefault) return room;
  throw new CliError(`--max-new-tokens ${asked} after a ${promptLength}-token prompt exceeds the model's ${maxPositions} positions; pass --max-new-tokens ${room} or less, or shorten the prompt.`, { exitCode: 2 });
}

/** Build the `lora` command set. */
export function buildProgram(context: ProgramContext): Command {
  const program = new Command('lora')
    .description('Choose a LoRA variant with the variant guide\'s flowchart, compose its plugins and fine-tune; plus model and adapter tools.')
    .configureOutput({
      writeOut: (text) => context.stdout.write(text),
      writeErr: (text) => context.stderr.write(text),
      // One line, as every other error: `lora: <what> (run with --help for usage)`.
      outputError: (text, write) => write(`lora: ${text.replace(/^error: /u, '').trim().split('\n').join(' ')} (run with --help for usage)\n`),
    })
    .version(`lora ${cliVersion()}`, '-V, --version', 'print the version')
    .exitOverride();

  addSelectOptions(program.command('select').description('walk the variant flowchart and print the recommended recipe'))
    .option('--run', 'then fine-tune with the recipe (same as lora train)')
    .action(async (options: SelectCommandOptions & { run?: boolean }, command: Command) => runSelect(options, command, context, options.run ?? false));

  addSelectOptions(program.command('train').description('select a variant, compose its plugins and fine-tune (the out-of-the-box run)'))
    .option('--resume <run-dir>', 'continue a stopped run (its --out, or the directory the stop message names) with its own settings')
    .action(async (options: SelectCommandOptions, command: Command) => runSelect(options, command, context, true));

  program
    .command('forward')
    .description('run a model (with optional adapters and 4-bit base) on token ids and write the logits')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled base)')
    .option('--adapter <dir>', 'PEFT adapter directory (repeatable; all are applied)', (value: string, previous: string[]) => [...previous, value], [] as string[])
    .addOption(new Option('--quantize <type>', 'quantize the base to 4 bits first').choices(['nf4', 'fp4']))
    .requiredOption('--input <in.json>', '(required) {"input_ids": [[…]], "attention_mask": [[…]], "token_type_ids": [[…]], "adapter_inputs": {…}}')
    .requiredOption('--out <out.json>', '(required) where to write {"logits": […]}: a new file')
    .option('--overwrite', 'replace --out if an earlier lora forward wrote it (never another file)')
    .option('--condition <factor=value,…>', 'HyperLoRA condition for every row (e.g. party=Democratic,era=modern)')
    .option('--allow-non-finite', ALLOW_NON_FINITE)
    .addOption(pluginOption())
    .action(
      async (options: { model?: string; adapter: string[]; quantize?: 'nf4' | 'fp4'; input: string; out: string; overwrite?: boolean; condition?: string; allowNonFinite?: boolean; plugin: string[] }) => {
        await assertWritableLogitsFile(options.out, { input: options.input, overwrite: options.overwrite });
        let input = await readForwardInput(options.input);
        const condition = options.condition === undefined ? undefined : await parseConditionFlag(options.condition, context.loader ?? importPackage);
        if (condition !== undefined) input = { ...input, adapter_inputs: { ...input.adapter_inputs, condition } };
        await initRuntime();
        const { model, adapterModel } = await loadModelWithAdapters({
          modelDirectory: options.model ?? bundledBaseDirectory(),
          adapterDirectories: options.adapter,
          quantize: options.quantize,
          loader: context.loader,
          allowNonFinite: options.allowNonFinite,
          pluginPackages: options.plugin,
        });
        try {
          if (condition !== undefined) await checkConditionFor(adapterModel, condition, context.loader ?? importPackage);
          checkForwardInputFits(model, input, options.input);
          // A condition in the input file (one per row, or for the batch) is the caller's to vouch for.
          if (condition !== undefined || input.adapter_inputs?.['condition'] === undefined) {
            const note = conditionNote(adapterModel, condition);
            if (note) context.stderr.write(`lora: note: ${note}.\n`);
            // The note says the HyperLoRA runs at its learned null embedding: ask for that explicitly (@lora/hyper refuses a forward pass without a condition).
            if (note && condition === undefined) input = { ...input, adapter_inputs: { ...input.adapter_inputs, condition: {} } };
          }
          model.eval();
          const logits = forwardLogits(model, input);
          const values = logits.arraySync();
          const finite = logits.dataSync().every(Number.isFinite);
          logits.dispose();
          // JSON has no NaN: they would be written as null. Only with --allow-non-finite, and then said.
          if (!finite && !options.allowNonFinite) throw new CliError('The logits are not finite (NaN or Infinity); nothing was written. Check the model and adapter weights.');
          await writeJsonAtomic(options.out, { logits: values });
          context.stdout.write(`wrote logits ${JSON.stringify(logits.shape)} to ${options.out}\n`);
          if (!finite) context.stderr.write(`lora: warning: some logits are not finite (NaN or Infinity), written as null in ${options.out}: the weights loaded with --allow-non-finite reach the output.\n`);
        } finally {
          model.dispose();
        }
      },
    );

  program
    .command('merge')
    .description('merge an adapter into its base model and write a plain Hugging Face checkpoint')
    .requiredOption('--model <dir>', '(required) Hugging Face model directory')
    .requiredOption('--adapter <dir>', '(required) PEFT adapter directory')
    .requiredOption('--out <dir>', '(required) output model directory')
    .option('--overwrite', 'replace an output directory an earlier lora command wrote (never one with other files)')
    .option('--allow-non-finite', ALLOW_NON_FINITE)
    .addOption(pluginOption())
    .action(async (options: { model: string; adapter: string; out: string; overwrite?: boolean; allowNonFinite?: boolean; plugin: string[] }) => {
      await initRuntime();
      const { model, adapterModel } = await loadModelWithAdapters({
        modelDirectory: options.model,
        adapterDirectories: [options.adapter],
        loader: context.loader,
        allowNonFinite: options.allowNonFinite,
        pluginPackages: options.plugin,
      });
      try {
        refuseHyperMerge(adapterModel!, { model: options.model, adapter: options.adapter });
        // A 4-bit base is merged into its dequantized weights (exact: what the adapter was trained
        // against) and written as a float model; re-quantizing in place would lose the merge's precision.
        const fourBit = model.namedModules().some(([, module]) => holdsNonFloatWeight(module));
        const merged = adapterModel!.mergeAndUnload({ dequantize: true });
        if (fourBit) context.stderr.write(`lora: note: ${options.model} is a 4-bit checkpoint: the adapter was merged into its dequantized weights and the merged model is written in float32 (lora quantize makes it 4-bit again).\n`);
        try {
          await writeDirectoryAtomically(
            options.out,
            async (staging) => {
              await savePretrained(merged, staging);
              await copyCompanionFiles(options.model, staging);
            },
            { overwrite: options.overwrite, kind: 'merge' },
          );
        } catch (error) {
          // savePretrained names the staging directory; the user knows --out.
          if (!(error instanceof NonFiniteTensorError)) throw error;
          throw new CliError(
            `Not writing the merged model to ${path.resolve(options.out)}: tensor "${error.tensor}" holds ${error.count} non-finite value${error.count === 1 ? '' : 's'} (first: ${error.found}); nothing was written. Merge finite weights (--allow-non-finite only lets them load).`,
            { exitCode: 2 },
          );
        }
        context.stdout.write(`wrote the merged model to ${path.resolve(options.out)}\n`);
      } finally {
        model.dispose();
      }
    });

  program
    .command('quantize')
    .description('write a 4-bit (bitsandbytes layout) checkpoint of a model')
    .requiredOption('--model <dir>', '(required) Hugging Face model directory')
    .requiredOption('--out <dir>', '(required) output model directory')
    .addOption(new Option('--type <type>', '4-bit code').choices(['nf4', 'fp4']).default('nf4'))
    .option('--double-quant', 'also quantize the absmax constants (≈4.127 bits per weight)')
    .option('--block-size <n>', 'elements per absmax block: 32, 64, …, 4096 (a power of two)', positiveInteger('--block-size'), 64)
    .option('--overwrite', 'replace an output directory an earlier lora command wrote (never one with other files)')
    .action(async (options: { model: string; out: string; type: 'nf4' | 'fp4'; doubleQuant?: boolean; blockSize: number; overwrite?: boolean }) => {
      // Before anything loads or is written: a 4-bit checkpoint would only be copied as it is, whatever --type and --block-size say.
      await refuseQuantizedModel(options.model);
      const loader = context.loader ?? importPackage;
      const quantPackageName = recipePackageFor('quant')!;
      let quantPackage: Record<string, unknown>;
      try {
        quantPackage = (await loader(quantPackageName)) as Record<string, unknown>;
      } catch {
        throw new MissingPackageError(quantPackageName, 'lora quantize');
      }
      const save = quantPackage['saveQuantizedPretrained'];
      if (typeof save !== 'function') throw new CliError(`The installed ${quantPackageName} has no saveQuantizedPretrained(); update it.`);
      // The sizes come from the quant package (bitsandbytes' block sizes), checked before the model loads.
      const blockSizes = quantPackage['VALID_BLOCK_SIZES'];
      if (Array.isArray(blockSizes) && !blockSizes.includes(options.blockSize)) {
        throw new CliError(`--block-size must be one of ${blockSizes.join(', ')}, got ${options.blockSize}.`, { exitCode: 2 });
      }
      await initRuntime();
      const { model } = await loadModelWithAdapters({ modelDirectory: options.model, adapterDirectories: [], loader });
      try {
        await writeDirectoryAtomically(
          options.out,
          async (staging) => {
            await (save as (m: unknown, d: string, o: unknown) => Promise<void>)(model, staging, { type: options.type, doubleQuant: options.doubleQuant ?? false, blockSize: options.blockSize });
            await copyCompanionFiles(options.model, staging);
          },
          { overwrite: options.overwrite, kind: 'quantize' },
        );
        context.stdout.write(`wrote the ${options.type} checkpoint to ${path.resolve(options.out)}\n`);
      } finally {
        model.dispose();
      }
    });

  program
    .command('doctor')
    .description('pick the fastest tensor backend here and say why the faster ones were passed over')
    .action(async () => {
      const loader = context.loader ?? importPackage;
      let cudaBackend: Record<string, unknown>;
      try {
        cudaBackend = (await loader('@lora/cuda-backend')) as Record<string, unknown>;
      } catch {
        throw new MissingPackageError('@lora/cuda-backend', 'lora doctor');
      }
      const report = await (cudaBackend['useBestBackend'] as () => Promise<unknown>)();
      context.stdout.write(`${(cudaBackend['formatBackendReport'] as (r: unknown) => string)(report)}\n`);
    });

  program
    .command('inspect')
    .description('summarise a model or adapter directory')
    .argument('<dir>', 'model or adapter directory')
    .option('--json', 'print JSON')
    .addOption(pluginOption())
    .action(async (directory: string, options: { json?: boolean; plugin: string[] }) => {
      const result = await inspectDirectory(directory, { loader: context.loader, extraPackages: extraPluginPackages(options.plugin) });
      context.stdout.write(options.json ? `${JSON.stringify(result, null, 2)}\n` : `${formatInspection(result)}\n`);
    });

  program
    .command('generate')
    .description('generate text from a causal language model (with an optional adapter)')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled base)')
    .option('--adapter <dir>', 'PEFT adapter directory (repeatable)', (value: string, previous: string[]) => [...previous, value], [] as string[])
    .requiredOption('--prompt <text>', '(required) prompt text')
    .option('--max-new-tokens <n>', 'tokens to generate', positiveInteger('--max-new-tokens'), 80)
    .addOption(new Option('--greedy', 'greedy decoding instead of sampling (no --temperature, --top-k or --top-p then)').conflicts(['temperature', 'topK', 'topP']))
    .option('--temperature <t>', 'sampling temperature', positiveNumber('--temperature'), 0.8)
    .option('--top-k <k>', 'sample among the k most likely tokens', positiveInteger('--top-k'), 20)
    .option('--top-p <p>', 'nucleus sampling mass', positiveNumber('--top-p', { max: 1 }), 1)
    .option('--seed <n>', 'sampling seed', seedOption(), 0)
    .option('--condition <factor=value,…>', 'HyperLoRA condition (e.g. party=Democratic,era=modern)')
    .option('--allow-non-finite', ALLOW_NON_FINITE)
    .addOption(pluginOption())
    .action(async (options: { model?: string; adapter: string[]; prompt: string; maxNewTokens: number; greedy?: boolean; temperature: number; topK: number; topP: number; seed: number; condition?: string; allowNonFinite?: boolean; plugin: string[] }, command: Command) => {
      const condition = options.condition === undefined ? undefined : await parseConditionFlag(options.condition, context.loader ?? importPackage);
      await initRuntime();
      const directory = options.model ?? bundledBaseDirectory();
      const { model, adapterModel } = await loadModelWithAdapters({
        modelDirectory: directory,
        adapterDirectories: options.adapter,
        loader: context.loader,
        allowNonFinite: options.allowNonFinite,
        pluginPackages: options.plugin,
      });
      try {
        if (condition !== undefined) await checkConditionFor(adapterModel, condition, context.loader ?? importPackage);
        const note = conditionNote(adapterModel, condition);
        if (note) context.stderr.write(`lora: note: ${note}.\n`);
        if (!(model instanceof CausalLanguageModel)) throw new CliError(`lora generate needs a causal language model; ${directory} holds a ${model.architecture}.`, { exitCode: 2 });
        // A checkpoint without tokenizer files (the tiny test models) takes bytes as token ids; a tokenizer file that is there but broken is an error.
        const hasTokenizer = (await pathExists(path.join(directory, 'tokenizer.json'))) || (await pathExists(path.join(directory, 'tokenizer_config.json')));
        const tokenizer = hasTokenizer ? await loadTokenizer(directory) : new ByteTokenizer();
        const promptIds = tokenizer.encode(options.prompt);
        if (promptIds.length === 0) throw new CliError('--prompt is empty; give the text to continue.', { exitCode: 2 });
        const maxNewTokens = newTokensThatFit(model.maxPositions, promptIds.length, options.maxNewTokens, command.getOptionValueSource('maxNewTokens') === 'default');
        if (maxNewTokens < options.maxNewTokens) context.stderr.write(`lora: generating ${maxNewTokens} tokens: the prompt's ${promptIds.length} fill the rest of the model's ${model.maxPositions} positions.\n`);
        const [tokens] = generate(model, [promptIds], {
          maxNewTokens,
          doSample: !options.greedy,
          temperature: options.temperature,
          topK: options.topK,
          topP: options.topP,
          seed: options.seed,
          // Without --condition a HyperLoRA runs at its learned null embedding (the note above says so), asked for explicitly.
          adapterInputs: condition !== undefined ? { condition } : note !== null ? { condition: {} } : undefined,
        });
        context.stdout.write(`${options.prompt}${tokenizer.decode(tokens!.slice(promptIds.length))}\n`);
      } finally {
        model.dispose();
      }
    });

  program
    .command('export')
    .description('write the plain PEFT LoRA a HyperLoRA adapter gives for one condition')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled base)')
    .requiredOption('--adapter <dir>', '(required) HyperLoRA adapter directory (peft_type HYPERLORA)')
    .requiredOption('--condition <factor=value,…>', '(required) the condition to export, e.g. party=Democratic,era=modern (a factor left out takes its learned null embedding)')
    .requiredOption('--out <dir>', '(required) output adapter directory')
    .option('--overwrite', 'replace an output directory an earlier lora command wrote (never one with other files)')
    .addOption(pluginOption())
    .action(async (options: { model?: string; adapter: string; condition: string; out: string; overwrite?: boolean; plugin: string[] }) => {
      await initRuntime();
      const loader = context.loader ?? importPackage;
      const { model, adapterModel } = await loadModelWithAdapters({ modelDirectory: options.model ?? bundledBaseDirectory(), adapterDirectories: [options.adapter], loader, pluginPackages: options.plugin });
      try {
        await exportHyperCondition({ adapterModel: adapterModel!, conditionText: options.condition, outDirectory: options.out, overwrite: options.overwrite, loader }, context);
      } finally {
        // The adapter model owns the HyperLoRA generator (its adapter state) as well as the model.
        if (adapterModel) adapterModel.dispose();
        else model.dispose();
      }
    });

  // Commander's own `help <command>` prints the whole help (to stderr, with no message) for a name
  // it does not know; ours says in one line that the command is unknown, and which there are.
  program.helpCommand(false);
  program
    .command('help')
    .description('display help for command')
    .argument('[command]', 'the command to describe')
    .action((name: string | undefined) => {
      if (name === undefined) return program.help();
      const command = program.commands.find((candidate) => candidate.name() === name || candidate.aliases().includes(name));
      if (!command) {
        const names = program.commands.map((candidate) => candidate.name()).filter((candidate) => candidate !== 'help');
        const near = closestName(name, names);
        throw new CliError(`Unknown command "${name}" for lora help${near ? ` (Did you mean ${near}?)` : ''}; the commands are ${names.join(', ')} (lora --help describes them).`, { exitCode: 2 });
      }
      command.help();
    });

  return program;
}

// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`.
function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, rows[i - 2]![j - 2]! + 1);
      rows[i]![j] = best;
    }
  }
  return rows[a.length]![b.length]!;
}

/** The candidate a mistyped name most likely meant, as commander suggests for `lora <command>`: at most a third of its letters edited. */
function closestName(name: string, candidates: readonly string[]): string | null {
  let best: string | null = null;
  let bestDistance = Math.max(1, Math.floor(name.length / 3)) + 1;
  for (const candidate of candidates) {
    const distance = editDistance(name.toLowerCase(), candidate);
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance];
  }
  return best;
}

/**
 * Run the CLI with `argv` (without `node` and the script) and return the exit code: 0 on success,
 * 2 for usage and input errors, 1 for other failures, 130/143 after Ctrl-C/SIGTERM. Errors print as
 * one line on stderr, without a stack trace (set LORA_DEBUG=1 for the stack); with `--json`,
 * stdout also gets `{"error": {"message", "exitCode"}}`, so it always holds one JSON document.
 */
export async function runCli(argv: readonly string[], context: ProgramContext): Promise<number> {
  const program = buildProgram(context);
  const json = argv.includes('--json');
  const fail = (message: string, exitCode: number): number => {
    // --json promises one JSON document on stdout whatever happens.
    if (json) context.stdout.write(`${JSON.stringify({ error: { message, exitCode } })}\n`);
    return exitCode;
  };
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander already printed the message (or the help, or the version).
      if (error.exitCode === 0 || error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return 0;
      return fail(error.message.replace(/^error: /u, ''), 2);
    }
    const message = (error instanceof Error ? error.message.replace(/^\[[^\]]+\]\s*/u, '') : String(error)).split('\n')[0]!;
    context.stderr.write(`lora: ${message}\n`);
    if (process.env['LORA_DEBUG'] && error instanceof Error && error.stack) context.stderr.write(`${error.stack}\n`);
    // Bad input the library recognised (a malformed file, a bad config) is a usage/input error.
    const exitCode = error instanceof CliError ? error.exitCode : error instanceof LoraError && !(error.name === 'TrainingError') ? 2 : 1;
    return fail(message, exitCode);
  }
}
