import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { initRuntime, writeJsonAtomic } from '@lora/core';
import { bundledBaseDirectory, CausalLanguageModel, generate, loadTokenizer, ByteTokenizer, savePretrained } from '@lora/models';
import { readSelectorConfig, type FlowchartFlags, type SelectorConfig } from './answers.js';
import { CliError, MissingPackageError } from './errors.js';
import { inspectDirectory, formatInspection } from './inspect.js';
import { parseByteSize } from './measure.js';
import { forwardLogits, loadModelWithAdapters, readForwardInput, writeDirectoryAtomically } from './model-io.js';
import { extraPluginPackages, importPackage, registryForRecipe, type PackageLoader } from './plugins.js';
import { recipePackageFor } from './recipe.js';
import { assertInstalled, formatSelection, select, type SelectorIo } from './select.js';
import { runTraining } from './train-run.js';
import { checkConditionFor, exportHyperCondition, parseConditionFlag, runHyperTraining } from './hyper-run.js';

/** Where the CLI reads and writes, plus an injectable package loader (tests simulate missing packages). */
export interface ProgramContext extends SelectorIo {
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

function positiveInteger(name: string) {
  return (value: string): number => {
    const parsed = Number(value);
    if (!Number.isInteger(parsed) || parsed <= 0) throw new InvalidArgumentError(`${name} must be a positive integer.`);
    return parsed;
  };
}

function positiveNumber(name: string) {
  return (value: string): number => {
    const parsed = Number(value);
    if (!(parsed > 0)) throw new InvalidArgumentError(`${name} must be a positive number.`);
    return parsed;
  };
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
    .option('--data <file.jsonl>', 'training texts, one {"text": …} per line (default: State of the Union speeches)')
    .option('--steps <n>', 'training steps', positiveInteger('--steps'), 300)
    .option('--batch-size <n>', 'sequences per step', positiveInteger('--batch-size'), 8)
    .option('--context <n>', 'tokens per sequence', positiveInteger('--context'), 128)
    .option('--learning-rate <lr>', 'peak learning rate', positiveNumber('--learning-rate'), 2e-3)
    .option('--seed <n>', 'seed for data split and sampling', (v) => Number.parseInt(v, 10), 0)
    .option('--out <dir>', 'output directory for the adapter and report (default: lora-runs/<variant>)')
    .option('--overwrite', 'replace a non-empty output directory')
    .option('--prompt <text>', 'prompt for before/after samples', 'The state of our Union is')
    .option('--json', 'print a machine-readable result');
}

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

async function runSelect(options: SelectCommandOptions, context: ProgramContext, runAfter: boolean): Promise<void> {
  const config: SelectorConfig | undefined = options.config ? await readSelectorConfig(options.config) : undefined;
  const budgetText = options.memoryBudget ?? (config?.memoryBudget === undefined ? undefined : String(config.memoryBudget));
  const memoryBudgetBytes = budgetText === undefined ? null : parseByteSize(budgetText);
  if (budgetText !== undefined && memoryBudgetBytes === null) {
    throw new CliError(`--memory-budget must be bytes or a size like 6GiB / 512MB, got "${budgetText}".`, { exitCode: 2 });
  }
  const modelDirectory = options.model ?? config?.model ?? null;
  const directory = modelDirectory ?? bundledBaseDirectory();
  const type = await modelType(directory);
  const backend = await startBackend(context.loader ?? importPackage);
  const steps = options.steps === 300 && config?.steps ? config.steps : options.steps;
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
    context,
  );
  if (options.json && !runAfter) context.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  else context.stdout.write(`${formatSelection(result, decision)}\n\n`);
  if (!runAfter) return;
  assertInstalled(result);
  const registry = await registryForRecipe(recipe, context.loader ?? importPackage);
  const run = {
    modelDirectory,
    dataFile: options.data ?? config?.data ?? null,
    outDirectory: options.out ?? config?.out ?? path.join('lora-runs', result.variant),
    overwrite: options.overwrite,
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
    await runHyperTraining({ ...run, loader: context.loader ?? importPackage }, context);
    return;
  }
  const report = await runTraining({ ...run, samplePrompt: options.prompt, decision, backend: backend.description }, context);
  const change = ((report.after.validationPerplexity / report.before.validationPerplexity - 1) * 100).toFixed(1);
  context.stdout.write(
    `Validation perplexity ${report.before.validationPerplexity.toFixed(3)} → ${report.after.validationPerplexity.toFixed(3)} (${change}%) with ${report.variant} in ${report.seconds.toFixed(0)} s.\n`,
  );
  if (options.json) context.stdout.write(`${JSON.stringify({ ...result, report: { before: report.before, after: report.after } })}\n`);
}

/** Build the `lora` command set. */
export function buildProgram(context: ProgramContext): Command {
  const program = new Command('lora')
    .description('Choose a LoRA variant with the variant guide\'s flowchart, compose its plugins and fine-tune; plus model and adapter tools.')
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ writeOut: (text) => context.stdout.write(text), writeErr: (text) => context.stderr.write(text) })
    .exitOverride();

  addSelectOptions(program.command('select').description('walk the variant flowchart and print the recommended recipe'))
    .option('--run', 'then fine-tune with the recipe (same as lora train)')
    .action(async (options: SelectCommandOptions & { run?: boolean }) => runSelect(options, context, options.run ?? false));

  addSelectOptions(program.command('train').description('select a variant, compose its plugins and fine-tune (the out-of-the-box run)')).action(
    async (options: SelectCommandOptions) => runSelect(options, context, true),
  );

  program
    .command('forward')
    .description('run a model (with optional adapters and 4-bit base) on token ids and write the logits')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled base)')
    .option('--adapter <dir>', 'PEFT adapter directory (repeatable; all are applied)', (value: string, previous: string[]) => [...previous, value], [] as string[])
    .addOption(new Option('--quantize <type>', 'quantize the base to 4 bits first').choices(['nf4', 'fp4']))
    .requiredOption('--input <in.json>', '{"input_ids": [[…]], "attention_mask": [[…]], "token_type_ids": [[…]]}')
    .requiredOption('--out <out.json>', 'where to write {"logits": […]}')
    .option('--condition <factor=value,…>', 'HyperLoRA condition for every row (e.g. party=Democratic,era=modern)')
    .addOption(pluginOption())
    .action(async (options: { model?: string; adapter: string[]; quantize?: 'nf4' | 'fp4'; input: string; out: string; condition?: string; plugin: string[] }) => {
      let input = await readForwardInput(options.input);
      const condition = options.condition === undefined ? undefined : await parseConditionFlag(options.condition, context.loader ?? importPackage);
      if (condition !== undefined) input = { ...input, adapter_inputs: { ...input.adapter_inputs, condition } };
      await initRuntime();
      const { model, adapterModel } = await loadModelWithAdapters({
        modelDirectory: options.model ?? bundledBaseDirectory(),
        adapterDirectories: options.adapter,
        quantize: options.quantize,
        loader: context.loader,
        pluginPackages: options.plugin,
      });
      try {
        if (condition !== undefined) await checkConditionFor(adapterModel, condition, context.loader ?? importPackage);
        model.eval();
        const logits = forwardLogits(model, input);
        const values = logits.arraySync();
        logits.dispose();
        await writeJsonAtomic(options.out, { logits: values });
        context.stdout.write(`wrote logits ${JSON.stringify(logits.shape)} to ${options.out}\n`);
      } finally {
        model.dispose();
      }
    });

  program
    .command('merge')
    .description('merge an adapter into its base model and write a plain Hugging Face checkpoint')
    .requiredOption('--model <dir>', 'Hugging Face model directory')
    .requiredOption('--adapter <dir>', 'PEFT adapter directory')
    .requiredOption('--out <dir>', 'output model directory')
    .option('--overwrite', 'replace a non-empty output directory')
    .addOption(pluginOption())
    .action(async (options: { model: string; adapter: string; out: string; overwrite?: boolean; plugin: string[] }) => {
      await initRuntime();
      const { model, adapterModel } = await loadModelWithAdapters({
        modelDirectory: options.model,
        adapterDirectories: [options.adapter],
        loader: context.loader,
        pluginPackages: options.plugin,
      });
      try {
        const merged = adapterModel!.mergeAndUnload();
        await writeDirectoryAtomically(options.out, (staging) => savePretrained(merged, staging), { overwrite: options.overwrite });
        context.stdout.write(`wrote the merged model to ${path.resolve(options.out)}\n`);
      } finally {
        model.dispose();
      }
    });

  program
    .command('quantize')
    .description('write a 4-bit (bitsandbytes layout) checkpoint of a model')
    .requiredOption('--model <dir>', 'Hugging Face model directory')
    .requiredOption('--out <dir>', 'output model directory')
    .addOption(new Option('--type <type>', '4-bit code').choices(['nf4', 'fp4']).default('nf4'))
    .option('--double-quant', 'also quantize the absmax constants (≈4.127 bits per weight)')
    .option('--block-size <n>', 'elements per absmax block', positiveInteger('--block-size'), 64)
    .option('--overwrite', 'replace a non-empty output directory')
    .action(async (options: { model: string; out: string; type: 'nf4' | 'fp4'; doubleQuant?: boolean; blockSize: number; overwrite?: boolean }) => {
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
      await initRuntime();
      const { model } = await loadModelWithAdapters({ modelDirectory: options.model, adapterDirectories: [], loader });
      try {
        await writeDirectoryAtomically(
          options.out,
          (staging) => (save as (m: unknown, d: string, o: unknown) => Promise<void>)(model, staging, { type: options.type, doubleQuant: options.doubleQuant ?? false, blockSize: options.blockSize }),
          { overwrite: options.overwrite },
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
        throw new CliError('lora doctor needs @lora/cuda-backend, which is not installed. Install it with: pnpm add @lora/cuda-backend');
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
    .requiredOption('--prompt <text>', 'prompt text')
    .option('--max-new-tokens <n>', 'tokens to generate', positiveInteger('--max-new-tokens'), 80)
    .option('--greedy', 'greedy decoding instead of sampling')
    .option('--temperature <t>', 'sampling temperature', positiveNumber('--temperature'), 0.8)
    .option('--top-k <k>', 'sample among the k most likely tokens', (v) => Number.parseInt(v, 10), 20)
    .option('--top-p <p>', 'nucleus sampling mass', positiveNumber('--top-p'), 1)
    .option('--seed <n>', 'sampling seed', (v) => Number.parseInt(v, 10), 0)
    .option('--condition <factor=value,…>', 'HyperLoRA condition (e.g. party=Democratic,era=modern)')
    .addOption(pluginOption())
    .action(async (options: { model?: string; adapter: string[]; prompt: string; maxNewTokens: number; greedy?: boolean; temperature: number; topK: number; topP: number; seed: number; condition?: string; plugin: string[] }) => {
      const condition = options.condition === undefined ? undefined : await parseConditionFlag(options.condition, context.loader ?? importPackage);
      await initRuntime();
      const directory = options.model ?? bundledBaseDirectory();
      const { model, adapterModel } = await loadModelWithAdapters({ modelDirectory: directory, adapterDirectories: options.adapter, loader: context.loader, pluginPackages: options.plugin });
      try {
        if (condition !== undefined) await checkConditionFor(adapterModel, condition, context.loader ?? importPackage);
        if (!(model instanceof CausalLanguageModel)) throw new CliError(`lora generate needs a causal language model; ${directory} holds a ${model.architecture}.`, { exitCode: 2 });
        const tokenizer = await loadTokenizer(directory).catch(() => new ByteTokenizer());
        const promptIds = tokenizer.encode(options.prompt);
        const [tokens] = generate(model, [promptIds], {
          maxNewTokens: options.maxNewTokens,
          doSample: !options.greedy,
          temperature: options.temperature,
          topK: options.topK,
          topP: options.topP,
          seed: options.seed,
          adapterInputs: condition === undefined ? undefined : { condition },
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
    .requiredOption('--adapter <dir>', 'HyperLoRA adapter directory (peft_type HYPERLORA)')
    .requiredOption('--condition <factor=value,…>', 'the condition to export, e.g. party=Democratic,era=modern')
    .requiredOption('--out <dir>', 'output adapter directory')
    .option('--overwrite', 'replace a non-empty output directory')
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

  return program;
}

/**
 * Run the CLI with `argv` (without `node` and the script) and return the exit code: 0 on success,
 * 2 for usage errors, 1 for other failures. Errors print as one line, without a stack trace
 * (set LORA_DEBUG=1 for the stack).
 */
export async function runCli(argv: readonly string[], context: ProgramContext): Promise<number> {
  const program = buildProgram(context);
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander already printed the message (or the help).
      return error.exitCode === 0 || error.code === 'commander.helpDisplayed' || error.code === 'commander.version' ? 0 : 2;
    }
    const message = error instanceof Error ? error.message.replace(/^\[[^\]]+\]\s*/u, '') : String(error);
    context.stderr.write(`lora: ${message.split('\n')[0]}\n`);
    if (process.env['LORA_DEBUG'] && error instanceof Error && error.stack) context.stderr.write(`${error.stack}\n`);
    return error instanceof CliError ? error.exitCode : 1;
  }
}
