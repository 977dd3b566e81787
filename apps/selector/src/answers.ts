import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { CliError, unreadableFile } from './errors.js';
import type { Answer, Decision, QuestionId } from './flowchart.js';
import { QUESTION_TEXT } from './flowchart.js';

/** The flowchart answers a user can give as flags (undefined = not given). */
export interface FlowchartFlags {
  /** `--memory`: `extreme` answers "memory limits extreme?" yes (→ QLoRA); `limited` and `ample` both answer no. */
  readonly memory?: 'extreme' | 'limited' | 'ample';
  /** `--multi-task` / `--no-multi-task`: yes leads to HyperLoRA or AdaLoRA (by compute). */
  readonly multiTask?: boolean;
  /** `--dynamic` / `--no-dynamic`: asked only when multi-task is no; yes leads to HyperLoRA or AdaLoRA (by compute). */
  readonly dynamic?: boolean;
  /** `--compute`: `substantial` picks HyperLoRA, `limited` AdaLoRA (asked only after a multi-task or dynamic yes). */
  readonly compute?: 'substantial' | 'limited';
  /** `--expressive` / `--no-expressive`: yes picks DoRA, no plain LoRA (the last question when nothing else applied). */
  readonly expressive?: boolean;
}

/** `selector.json`: the same answers as the flags, plus run settings. */
export const selectorConfigSchema = z
  .object({
    /** As `--memory`: `extreme` answers "memory limits extreme?" yes; `limited` and `ample` answer no. */
    memory: z.enum(['extreme', 'limited', 'ample']).optional(),
    /** As `--multi-task` / `--no-multi-task`. */
    multiTask: z.boolean().optional(),
    /** As `--dynamic` / `--no-dynamic`. */
    dynamic: z.boolean().optional(),
    /** As `--compute`: `substantial` answers "computational resources substantial?" yes. */
    compute: z.enum(['substantial', 'limited']).optional(),
    /** As `--expressive` / `--no-expressive`. */
    expressive: z.boolean().optional(),
    /** As `--memory-budget`: bytes, or a size string such as `"6GiB"` or `"512MB"` (default: free system memory). */
    memoryBudget: z.union([z.number().positive(), z.string()]).optional(),
    /** As `--model`: Hugging Face model directory (default: the bundled base). */
    model: z.string().optional(),
    /** As `--data`: JSONL file of training texts (default: the State of the Union speeches). */
    data: z.string().optional(),
    /** As `--steps`: training steps, used when `--steps` is not given (CLI default 300). */
    steps: z.number().int().positive().optional(),
    /** As `--out`: output directory for the adapter and report (default `lora-runs/<variant>`). */
    out: z.string().optional(),
  })
  .strict();

/** A parsed `selector.json` (see {@link selectorConfigSchema}). */
export type SelectorConfig = z.infer<typeof selectorConfigSchema>;

/**
 * Read and validate a selector config file.
 * @throws {CliError} naming the file and the field on any problem.
 */
export async function readSelectorConfig(file: string): Promise<SelectorConfig> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    throw unreadableFile('Config file', file, error, 'check the --config path');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new CliError(`Config file ${file} is not valid JSON: ${(error as Error).message}.`, { exitCode: 2 });
  }
  const result = selectorConfigSchema.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    const field = issue.code === 'unrecognized_keys' ? issue.keys.join(', ') : issue.path.join('.');
    throw new CliError(`Config file ${file}: ${field || '(root)'}: ${issue.message}.`, { exitCode: 2 });
  }
  // Paths in the file are relative to the file, wherever lora is run from.
  const relativeTo = (value: string | undefined) => (value === undefined ? undefined : path.resolve(path.dirname(file), value));
  return { ...result.data, model: relativeTo(result.data.model), data: relativeTo(result.data.data), out: relativeTo(result.data.out) };
}

/** Measured answers for the questions a machine can answer. */
export interface MeasuredAnswers {
  /** "Memory limits extreme?", compared: the float32 LoRA training estimate against the memory available. */
  readonly memoryExtreme: {
    /** True when the estimated training memory exceeds the available memory. */
    readonly value: boolean;
    /** The estimate, parameter count and available memory with its source, e.g. `float32 LoRA training needs ~1.9 GiB (124,439,808 params) <= 6.0 GiB --memory-budget`. */
    readonly detail: string;
  };
  /** "Computational resources substantial?", judged by `judgeCompute`. */
  readonly computeSubstantial: {
    /** True with a GPU backend, or with at least 8 CPU cores. */
    readonly value: boolean;
    /** The reason, e.g. `GPU backend "webgpu" present` or `no GPU (backend "cpu"), 4 CPU cores < 8`. */
    readonly detail: string;
  };
}

/** Asks a yes/no question on a terminal; `suggestion` is the default shown. */
export type YesNoPrompt = (question: string, suggestion: boolean) => Promise<boolean>;

function fromTriState(question: QuestionId, flags: FlowchartFlags): boolean | undefined {
  switch (question) {
    case 'memoryExtreme':
      return flags.memory === undefined ? undefined : flags.memory === 'extreme';
    case 'computeSubstantial':
      return flags.compute === undefined ? undefined : flags.compute === 'substantial';
    default:
      return flags[question];
  }
}

function describeFlag(question: QuestionId, value: boolean): string {
  switch (question) {
    case 'memoryExtreme':
      return value ? '--memory extreme' : '--memory limited|ample';
    case 'computeSubstantial':
      return value ? '--compute substantial' : '--compute limited';
    case 'multiTask':
      return value ? '--multi-task' : '--no-multi-task';
    case 'dynamic':
      return value ? '--dynamic' : '--no-dynamic';
    case 'expressive':
      return value ? '--expressive' : '--no-expressive';
  }
}

/** For each question, what the flowchart asks it about and on which paths (the notes below quote it). */
const ASKED_WHEN: Readonly<Record<QuestionId, { readonly about: string; readonly when: string }>> = {
  memoryExtreme: { about: 'memory limits', when: 'first, always' },
  multiTask: { about: 'multi-task', when: 'only when memory limits are not extreme' },
  dynamic: { about: 'dynamic adaptation', when: 'only when memory limits are not extreme and multi-task is not needed' },
  computeSubstantial: { about: 'compute', when: 'only after a yes to multi-task or dynamic adaptation' },
  expressive: { about: 'expressiveness', when: 'only when memory limits are not extreme and neither multi-task nor dynamic adaptation is needed' },
};

const QUESTION_ORDER: readonly QuestionId[] = ['memoryExtreme', 'multiTask', 'dynamic', 'computeSubstantial', 'expressive'];

/**
 * The flowchart answers given as flags whose question the path taken never asked (the flowchart
 * asks some only on some paths: `--compute` only after a multi-task or dynamic yes, for one), so
 * they did not affect the choice. Each is named as typed (e.g. `--compute substantial`,
 * `--no-dynamic`), in flowchart order; empty when every flag given was used.
 */
export function unaskedFlags(flags: FlowchartFlags, decision: Decision): { flag: string; question: QuestionId }[] {
  const asked = new Set(decision.path.map((step) => step.question));
  const out: { flag: string; question: QuestionId }[] = [];
  for (const question of QUESTION_ORDER) {
    const value = fromTriState(question, flags);
    if (value !== undefined && !asked.has(question)) out.push({ flag: question === 'memoryExtreme' ? `--memory ${flags.memory}` : describeFlag(question, value), question });
  }
  return out;
}

/**
 * The one-line note for {@link unaskedFlags}: which flags did not affect the choice of `variant`,
 * and on which paths the flowchart asks about each; null when there are none.
 * @example
 * unaskedFlagsNote([{ flag: '--compute substantial', question: 'computeSubstantial' }], 'LoRA');
 * // '--compute substantial did not affect the choice of LoRA: the flowchart asks about compute only after a yes to multi-task or dynamic adaptation'
 */
export function unaskedFlagsNote(unasked: readonly { readonly flag: string; readonly question: QuestionId }[], variant: string): string | null {
  if (unasked.length === 0) return null;
  const reasons = unasked.map(({ question }) => `about ${ASKED_WHEN[question].about} ${ASKED_WHEN[question].when}`);
  const joined = reasons.length === 1 ? reasons[0]! : `${reasons.slice(0, -1).join(', ')}, and ${reasons.at(-1)!}`;
  return `${unasked.map((entry) => entry.flag).join(', ')} did not affect the choice of ${variant}: the flowchart asks ${joined}`;
}

/**
 * Answer one flowchart question from, in precedence order: flags, the config file, an interactive
 * prompt (only when `prompt` is given, i.e. on a TTY; a measured value is offered as its default),
 * a measurement (memory and compute), and otherwise "no" — saying that no source answered it.
 */
export async function resolveAnswer(
  question: QuestionId,
  sources: {
    readonly flags: FlowchartFlags;
    readonly config?: SelectorConfig;
    readonly measured?: MeasuredAnswers;
    readonly prompt?: YesNoPrompt;
  },
): Promise<Answer> {
  const flag = fromTriState(question, sources.flags);
  if (flag !== undefined) return { value: flag, source: 'flag', detail: describeFlag(question, flag) };
  const configured = sources.config ? fromTriState(question, sources.config) : undefined;
  if (configured !== undefined) return { value: configured, source: 'config', detail: `config file sets it to ${configured}` };
  const measured = question === 'memoryExtreme' || question === 'computeSubstantial' ? sources.measured?.[question] : undefined;
  if (sources.prompt) {
    const suggestion = measured?.value ?? false;
    const text = measured ? `${QUESTION_TEXT[question]} (measured: ${measured.detail})` : QUESTION_TEXT[question];
    const value = await sources.prompt(text, suggestion);
    return { value, source: 'prompt', detail: `answered ${value ? 'yes' : 'no'} at the prompt` };
  }
  if (measured) return { value: measured.value, source: 'measurement', detail: measured.detail };
  return { value: false, source: 'default', detail: 'no flag, config or terminal answered it, so it counts as no' };
}
