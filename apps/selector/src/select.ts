import { confirm } from '@inquirer/prompts';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { availableMemory, estimateLoraTrainingMemory, formatBytes, judgeCompute, readModelFootprint, type TrainingShape } from './measure.js';
import { resolveAnswer, unaskedFlags, type FlowchartFlags, type MeasuredAnswers, type SelectorConfig, type YesNoPrompt } from './answers.js';
import { renderPathDiagram, variantName, walkFlowchart, type Decision, type QuestionId, type Variant } from './flowchart.js';
import { checkInstalled, importPackage, registryForRecipe, type PackageLoader } from './plugins.js';
import { recipeFor, type VariantRecipe } from './recipe.js';
import { camelToSnake } from '@lora/core/internal';
import { CliError, MissingPackageError } from './errors.js';
import { installCommand } from './package-manager.js';

/** Streams the selector talks through (injectable for tests). */
export interface SelectorIo {
  /** Reports, progress and prompts (under `--json` the CLI passes its stderr here, keeping stdout for the JSON). */
  readonly stdout: Writable;
  /** One-line error messages (and, under `--json`, everything meant for people). */
  readonly stderr: Writable;
  /** Read by the interactive prompts. */
  readonly stdin: Readable;
  /** Whether stdin and stdout are a terminal: prompts are only shown then. */
  readonly interactive: boolean;
}

/** Options of `lora select`. */
export interface SelectOptions extends FlowchartFlags {
  /** A parsed `selector.json`: its answers count where no flag gives one (its run settings are the caller's to apply). */
  readonly config?: SelectorConfig;
  /** Model directory (Hugging Face layout) whose training memory is estimated. */
  readonly modelDirectory: string;
  /** Memory available for training, in bytes (`--memory-budget`); null uses the OS's free memory. */
  readonly memoryBudgetBytes: number | null;
  /** Batch, sequence length and rank for the memory estimate, plus the run's steps. */
  readonly training: TrainingShape & {
    /** Total training steps, which set AdaLoRA's schedule in the recipe. */
    readonly steps: number;
  };
  /** Backend name and whether it is a GPU, for the compute question. */
  readonly backend: {
    /** The backend's name, as quoted in the compute answer's detail. */
    readonly name: string;
    /** A GPU backend makes the compute answer "substantial" whatever the core count. */
    readonly gpu: boolean;
  };
  /** Module names the recipe's adapter targets (PEFT's `target_modules`), e.g. `['c_attn', 'c_proj']` for GPT-2. */
  readonly targetModules: readonly string[];
  /** Whether the targets store weights [in, out] (GPT-2's Conv1D); written to the config as PEFT does. */
  readonly fanInFanOut?: boolean;
  /** Imports the recipe's packages to see which are installed (default {@link importPackage}). */
  readonly loader?: PackageLoader;
}

/** The result `--json` prints. */
export interface SelectResult {
  /** The recommended variant. */
  readonly variant: Variant;
  /** The questions asked, with each answer, its source and its reason. */
  readonly path: Decision['path'];
  /**
   * Flowchart answers given as flags whose question the path taken never asked, so they did not
   * affect the choice (e.g. `--compute` on a path without multi-task or dynamic adaptation); empty
   * when every one given was used. The CLI also says so in a note on stderr.
   */
  readonly unaskedFlags: readonly {
    /** The flag as typed, e.g. `--compute substantial` or `--no-dynamic`. */
    readonly flag: string;
    /** The question it answers, which the path did not reach. */
    readonly question: QuestionId;
  }[];
  /** What the variant needs, and its config. */
  readonly recipe: {
    /** Adapter plugin name in the registry (`lora`, `dora`, `adalora` or `hyper`). */
    readonly adapter: string;
    /** Base transform plugins (`['quant']` for QLoRA, else empty). */
    readonly transforms: readonly string[];
    /** Every npm package the recipe needs, `@lora/core` first. */
    readonly packages: readonly string[];
    /** Those of `packages` that are not installed (empty when all are). */
    readonly missingPackages: readonly string[];
    /** The command installing `missingPackages` with the user's package manager; null when none are missing or one is not published. */
    readonly installCommand: string | null;
    /** The adapter config as PEFT JSON (snake_case keys): the plugin's own `toPeftJson` when installed, else the options with keys converted. */
    readonly config: Readonly<Record<string, unknown>>;
    /** One line on what the variant does. */
    readonly summary: string;
  };
  /** The measurements behind the memory and compute answers (taken even when a flag or the config answered). */
  readonly measurements: {
    /** Estimated float32 LoRA training memory, in bytes (`MemoryEstimate.totalBytes`). */
    readonly estimatedTrainingBytes: number;
    /** Memory the estimate was compared with, in bytes. */
    readonly availableBytes: number;
    /** Where `availableBytes` came from: `--memory-budget` or `free system memory`. */
    readonly availableSource: string;
    /** The compute judgement's reason, e.g. `GPU backend "webgpu" present`. */
    readonly compute: string;
  };
}

/** Measure the answers a machine can give: memory (estimate vs available) and compute. */
export async function measureAnswers(options: SelectOptions): Promise<{
  /** The measured memory and compute answers. */
  answers: MeasuredAnswers;
  /** Estimated float32 LoRA training memory, in bytes. */
  estimate: number;
  /** The memory the estimate is compared with. */
  available: {
    /** Available memory, in bytes. */
    bytes: number;
    /** Where it came from: `--memory-budget` or `free system memory`. */
    source: string;
  };
}> {
  const footprint = await readModelFootprint(options.modelDirectory).catch((error: unknown) => {
    throw new CliError(`Cannot read the model in ${options.modelDirectory}: ${(error as Error).message}`);
  });
  const estimate = estimateLoraTrainingMemory(footprint, options.training);
  const available = availableMemory(options.memoryBudgetBytes);
  const extreme = estimate.totalBytes > available.bytes;
  const compute = judgeCompute(options.backend);
  return {
    estimate: estimate.totalBytes,
    available,
    answers: {
      memoryExtreme: {
        value: extreme,
        detail: `float32 LoRA training needs ~${formatBytes(estimate.totalBytes)} (${footprint.parameters.toLocaleString('en-US')} params) ${extreme ? '>' : '<='} ${formatBytes(available.bytes)} ${available.source}`,
      },
      computeSubstantial: { value: compute.substantial, detail: compute.detail },
    },
  };
}

/** A yes/no prompt on the given streams, through @inquirer/prompts. */
export function terminalPrompt(io: SelectorIo): YesNoPrompt {
  return (question, suggestion) => {
    // The prompt library ends the stream it writes to when it closes; give it a per-prompt stream
    // that forwards to ours without ending it, so later output still arrives.
    const output = new PassThrough();
    output.pipe(io.stdout, { end: false });
    return confirm({ message: question, default: suggestion }, { input: io.stdin, output });
  };
}

/** PEFT JSON for a recipe: the plugin's own conversion when installed, else snake_case options. */
async function recipeConfigJson(recipe: VariantRecipe, missing: readonly string[], loader: PackageLoader): Promise<Record<string, unknown>> {
  if (missing.length === 0) {
    const registry = await registryForRecipe(recipe, loader);
    const plugin = registry.adapter(recipe.adapter);
    return { ...plugin.toPeftJson(plugin.parseConfig(recipe.options)) };
  }
  const json: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(recipe.options)) json[camelToSnake(key)] = value;
  return json;
}

/** Walk the flowchart with every answer source and build the recipe. */
export async function select(options: SelectOptions, io: SelectorIo): Promise<{
  /** What `--json` prints. */
  result: SelectResult;
  /** The chosen variant's recipe, with camelCase options, for training. */
  recipe: VariantRecipe;
  /** The flowchart's result, with the path taken. */
  decision: Decision;
}> {
  const measured = await measureAnswers(options);
  const prompt = io.interactive ? terminalPrompt(io) : undefined;
  const decision = await walkFlowchart((question) =>
    resolveAnswer(question, { flags: options, config: options.config, measured: measured.answers, prompt }),
  );
  // PEFT's AdaLoRA schedule needs tinit < totalStep − tfinal: a warm-up, a pruning and a final step at least.
  if (decision.variant === 'adalora' && options.training.steps < 3) {
    throw new CliError(`AdaLoRA needs --steps 3 or more (its rank schedule warms up, prunes and settles over one step each at least), got ${options.training.steps}.`, { exitCode: 2 });
  }
  const recipe = recipeFor(decision.variant, {
    targetModules: options.targetModules,
    fanInFanOut: options.fanInFanOut ?? false,
    steps: options.training.steps,
    taskType: 'CAUSAL_LM',
  });
  const loader = options.loader ?? importPackage;
  const { missing } = await checkInstalled(recipe, loader);
  const config = await recipeConfigJson(recipe, missing, loader);
  const result: SelectResult = {
    variant: decision.variant,
    path: decision.path,
    unaskedFlags: unaskedFlags(options, decision),
    recipe: {
      adapter: recipe.adapter,
      transforms: recipe.transforms,
      packages: ['@lora/core', ...recipe.packages],
      missingPackages: missing,
      installCommand: missing.length > 0 ? installCommand(missing) : null,
      config,
      summary: recipe.summary,
    },
    measurements: {
      estimatedTrainingBytes: measured.estimate,
      availableBytes: measured.available.bytes,
      availableSource: measured.available.source,
      compute: measured.answers.computeSubstantial.detail,
    },
  };
  return { result, recipe, decision };
}

/** The human-readable report of a selection. */
export function formatSelection(result: SelectResult, decision: Decision): string {
  const lines = ['Variant selection (the flowchart of the variant guide):', ''];
  decision.path.forEach((step, index) => {
    lines.push(`${index + 1}. ${step.text} ${step.answer ? 'yes' : 'no'} — ${step.source}: ${step.detail}`);
  });
  lines.push('', renderPathDiagram(decision), '');
  lines.push(`Recommended: ${variantName(result.variant)} — ${result.recipe.summary}.`);
  lines.push(`Recipe: adapter "${result.recipe.adapter}"${result.recipe.transforms.length ? ` + base transform ${result.recipe.transforms.map((t) => `"${t}"`).join(', ')}` : ''}; packages ${result.recipe.packages.join(', ')}.`);
  lines.push('Config (PEFT JSON):', JSON.stringify(result.recipe.config, null, 2));
  if (result.recipe.missingPackages.length > 0) {
    const missing = `Missing package${result.recipe.missingPackages.length > 1 ? 's' : ''}: ${result.recipe.missingPackages.join(', ')}.`;
    lines.push('', result.recipe.installCommand ? `${missing} Install with: ${result.recipe.installCommand}` : `${missing} Not published yet: choose another variant.`);
  }
  return lines.join('\n');
}

/** Throw the one-line "install X" error when a selection needs packages that are not installed. */
export function assertInstalled(result: SelectResult): void {
  const first = result.recipe.missingPackages[0];
  if (first) throw new MissingPackageError(first, `${variantName(result.variant)} (${result.variant})`);
}
