import { confirm } from '@inquirer/prompts';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { availableMemory, estimateLoraTrainingMemory, formatBytes, judgeCompute, readModelFootprint, type TrainingShape } from './measure.js';
import { resolveAnswer, type FlowchartFlags, type MeasuredAnswers, type SelectorConfig, type YesNoPrompt } from './answers.js';
import { renderPathDiagram, variantName, walkFlowchart, type Decision, type Variant } from './flowchart.js';
import { checkInstalled, importPackage, registryForRecipe, type PackageLoader } from './plugins.js';
import { recipeFor, type VariantRecipe } from './recipe.js';
import { camelToSnake } from '@lora/core/internal';
import { CliError, MissingPackageError } from './errors.js';
import { installCommandFor } from './install-command.js';

/** Streams the selector talks through (injectable for tests). */
export interface SelectorIo {
  readonly stdout: Writable;
  readonly stderr: Writable;
  readonly stdin: Readable;
  /** Whether stdin and stdout are a terminal: prompts are only shown then. */
  readonly interactive: boolean;
}

/** Options of `lora select`. */
export interface SelectOptions extends FlowchartFlags {
  readonly config?: SelectorConfig;
  /** Model directory (Hugging Face layout) whose training memory is estimated. */
  readonly modelDirectory: string;
  readonly memoryBudgetBytes: number | null;
  readonly training: TrainingShape & { readonly steps: number };
  /** Backend name and whether it is a GPU, for the compute question. */
  readonly backend: { readonly name: string; readonly gpu: boolean };
  readonly targetModules: readonly string[];
  /** Whether the targets store weights [in, out] (GPT-2's Conv1D); written to the config as PEFT does. */
  readonly fanInFanOut?: boolean;
  readonly loader?: PackageLoader;
}

/** The result `--json` prints. */
export interface SelectResult {
  readonly variant: Variant;
  readonly path: Decision['path'];
  readonly recipe: {
    readonly adapter: string;
    readonly transforms: readonly string[];
    readonly packages: readonly string[];
    readonly missingPackages: readonly string[];
    readonly installCommand: string | null;
    readonly config: Readonly<Record<string, unknown>>;
    readonly summary: string;
  };
  readonly measurements: {
    readonly estimatedTrainingBytes: number;
    readonly availableBytes: number;
    readonly availableSource: string;
    readonly compute: string;
  };
}

/** Measure the answers a machine can give: memory (estimate vs available) and compute. */
export async function measureAnswers(options: SelectOptions): Promise<{ answers: MeasuredAnswers; estimate: number; available: { bytes: number; source: string } }> {
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
export async function select(options: SelectOptions, io: SelectorIo): Promise<{ result: SelectResult; recipe: VariantRecipe; decision: Decision }> {
  const measured = await measureAnswers(options);
  const prompt = io.interactive ? terminalPrompt(io) : undefined;
  const decision = await walkFlowchart((question) =>
    resolveAnswer(question, { flags: options, config: options.config, measured: measured.answers, prompt }),
  );
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
    recipe: {
      adapter: recipe.adapter,
      transforms: recipe.transforms,
      packages: ['@lora/core', ...recipe.packages],
      missingPackages: missing,
      installCommand: missing.length > 0 ? installCommandFor(missing) : null,
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
  if (result.recipe.installCommand) lines.push('', `Missing package${result.recipe.missingPackages.length > 1 ? 's' : ''}: ${result.recipe.missingPackages.join(', ')}. Install with: ${result.recipe.installCommand}`);
  return lines.join('\n');
}

/** Throw the one-line "install X" error when a selection needs packages that are not installed. */
export function assertInstalled(result: SelectResult): void {
  const first = result.recipe.missingPackages[0];
  if (first) throw new MissingPackageError(first, `${variantName(result.variant)} (${result.variant})`);
}
