/** The variants the flowchart can recommend. */
export type Variant = 'lora' | 'dora' | 'qlora' | 'adalora' | 'hyperlora';

/** The questions of the variant guide's selection flowchart. */
export type QuestionId = 'memoryExtreme' | 'multiTask' | 'dynamic' | 'computeSubstantial' | 'expressive';

/** Where an answer came from, in precedence order. */
export type AnswerSource = 'flag' | 'config' | 'prompt' | 'measurement' | 'default';

/** One answered question, with the evidence behind it. */
export interface Answer {
  /** True for yes; a `default` answer is always no (false). */
  readonly value: boolean;
  /** The first source, in precedence order, that could answer (flag, config file, prompt, measurement), else `default`. */
  readonly source: AnswerSource;
  /** Human-readable reason, with numbers where a measurement decided it. */
  readonly detail: string;
}

/** One step of the path through the flowchart. */
export interface PathStep {
  /** The question's id (its key in {@link QUESTION_TEXT}). */
  readonly question: QuestionId;
  /** The question as printed (its {@link QUESTION_TEXT} entry). */
  readonly text: string;
  /** The answer taken: true for yes. */
  readonly answer: boolean;
  /** Which source gave the answer. */
  readonly source: AnswerSource;
  /** The answer's human-readable reason (see {@link Answer.detail}). */
  readonly detail: string;
}

/** The flowchart's result. */
export interface Decision {
  /** The recommended variant: the flowchart leaf the path reaches. */
  readonly variant: Variant;
  /** The questions asked, in order: only those on the path taken (one, three or four). */
  readonly path: readonly PathStep[];
}

/** The question each flowchart step asks, as prompts and reports print it. */
export const QUESTION_TEXT: Readonly<Record<QuestionId, string>> = {
  memoryExtreme: 'Are memory limitations extreme?',
  multiTask: 'Is multi-task capability needed?',
  dynamic: 'Is dynamic adaptation needed?',
  computeSubstantial: 'Are computational resources substantial?',
  expressive: 'Is increased expressiveness needed?',
};

/**
 * Walk the variant guide's flowchart:
 * 1. extreme memory limits → QLoRA;
 * 2. else multi-task or dynamic adaptation → HyperLoRA with substantial compute, AdaLoRA with limited;
 * 3. else increased expressiveness → DoRA, otherwise LoRA.
 *
 * `answer` is called only for the questions on the path actually taken, in order (so a prompt
 * never asks a question whose answer cannot change the result).
 */
export async function walkFlowchart(answer: (question: QuestionId) => Answer | Promise<Answer>): Promise<Decision> {
  const path: PathStep[] = [];
  const ask = async (question: QuestionId): Promise<boolean> => {
    const result = await answer(question);
    path.push({ question, text: QUESTION_TEXT[question], answer: result.value, source: result.source, detail: result.detail });
    return result.value;
  };
  if (await ask('memoryExtreme')) return { variant: 'qlora', path };
  // "Multi-task capability or dynamic adaptation": the second is asked only when the first is no.
  const adaptive = (await ask('multiTask')) || (await ask('dynamic'));
  if (adaptive) return { variant: (await ask('computeSubstantial')) ? 'hyperlora' : 'adalora', path };
  return { variant: (await ask('expressive')) ? 'dora' : 'lora', path };
}

const VARIANT_NAMES: Readonly<Record<Variant, string>> = {
  lora: 'LoRA',
  dora: 'DoRA',
  qlora: 'QLoRA',
  adalora: 'AdaLoRA',
  hyperlora: 'HyperLoRA',
};

/** Display name of a variant. */
export function variantName(variant: Variant): string {
  return VARIANT_NAMES[variant];
}

const SHORT_LABEL: Readonly<Record<QuestionId, string>> = {
  memoryExtreme: 'memory limits extreme?',
  multiTask: 'multi-task needed?',
  dynamic: 'dynamic adaptation?',
  computeSubstantial: 'compute substantial?',
  expressive: 'more expressiveness?',
};

/**
 * A small terminal diagram of the path taken:
 * ```
 * ┌─ memory limits extreme? ── no
 * ├─ multi-task needed? ────── no
 * ├─ dynamic adaptation? ───── no
 * ├─ more expressiveness? ──── no
 * └─▶ LoRA
 * ```
 */
export function renderPathDiagram(decision: Decision): string {
  const width = Math.max(...decision.path.map((step) => SHORT_LABEL[step.question].length)) + 3;
  const lines = decision.path.map((step, index) => {
    const label = SHORT_LABEL[step.question];
    return `${index === 0 ? '┌' : '├'}─ ${label} ${'─'.repeat(width - label.length)} ${step.answer ? 'yes' : 'no'}`;
  });
  lines.push(`└─▶ ${variantName(decision.variant)}`);
  return lines.join('\n');
}
