import { promises as fs } from 'node:fs';
import { z } from 'zod';
import { CliError } from './errors.js';
import type { Answer, QuestionId } from './flowchart.js';
import { QUESTION_TEXT } from './flowchart.js';

/** The flowchart answers a user can give as flags (undefined = not given). */
export interface FlowchartFlags {
  readonly memory?: 'extreme' | 'limited' | 'ample';
  readonly multiTask?: boolean;
  readonly dynamic?: boolean;
  readonly compute?: 'substantial' | 'limited';
  readonly expressive?: boolean;
}

/** `selector.json`: the same answers as the flags, plus run settings. */
export const selectorConfigSchema = z
  .object({
    memory: z.enum(['extreme', 'limited', 'ample']).optional(),
    multiTask: z.boolean().optional(),
    dynamic: z.boolean().optional(),
    compute: z.enum(['substantial', 'limited']).optional(),
    expressive: z.boolean().optional(),
    memoryBudget: z.union([z.number().positive(), z.string()]).optional(),
    model: z.string().optional(),
    data: z.string().optional(),
    steps: z.number().int().positive().optional(),
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
    throw new CliError(`Cannot read config file ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}.`, { exitCode: 2 });
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
  return result.data;
}

/** Measured answers for the questions a machine can answer. */
export interface MeasuredAnswers {
  readonly memoryExtreme: { readonly value: boolean; readonly detail: string };
  readonly computeSubstantial: { readonly value: boolean; readonly detail: string };
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
