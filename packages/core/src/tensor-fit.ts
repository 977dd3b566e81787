import { CheckpointError } from './errors.js';

/** How a file's tensors fit what a model or adapter expects. */
export interface TensorFit {
  /** Expected keys the file lacks. */
  readonly missing: readonly string[];
  /** File keys nothing expects. */
  readonly unexpected: readonly string[];
  /** Keys present with another shape. */
  readonly mismatched: readonly { readonly name: string; readonly expected: readonly number[]; readonly received: readonly number[] }[];
}

/**
 * Compare the shapes a model or adapter expects (key → shape; `null` accepts any shape, for layers
 * that resize on load) with the tensors a file holds. Keys `ignore` accepts are neither expected nor
 * unexpected (buffers, tied copies).
 */
export function compareTensorShapes(
  expected: ReadonlyMap<string, readonly number[] | null>,
  found: ReadonlyMap<string, { readonly shape: readonly number[] }>,
  options: { readonly ignore?: (key: string) => boolean } = {},
): TensorFit {
  const missing: string[] = [];
  const mismatched: { name: string; expected: readonly number[]; received: readonly number[] }[] = [];
  for (const [key, shape] of expected) {
    const entry = found.get(key);
    if (!entry) missing.push(key);
    else if (shape !== null && !sameShape(shape, entry.shape)) mismatched.push({ name: key, expected: shape, received: entry.shape });
  }
  const unexpected = [...found.keys()].filter((key) => !expected.has(key) && !options.ignore?.(key));
  return { missing, unexpected, mismatched };
}

/** Whether two shapes are equal. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((size, i) => size === b[i]);
}

const LISTED = 5;

function listed(names: readonly string[]): string {
  return names.length <= LISTED ? names.join(', ') : `${names.slice(0, LISTED).join(', ')} and ${names.length - LISTED} more`;
}

/**
 * The one error format of every checkpoint and adapter reader: throws a {@link CheckpointError}, in one
 * line naming the source, what it should fit, each kind of problem with up to five keys (shapes as
 * expected and found), and the fix, when tensors are mis-shaped or (with `strict`, the default) missing
 * or unexpected.
 */
export function assertTensorsFit(
  fit: TensorFit,
  context: { readonly plugin: string; readonly source: string; readonly target: string; readonly strict?: boolean; readonly hint?: string },
): void {
  const strict = context.strict ?? true;
  if (fit.mismatched.length === 0 && (!strict || (fit.missing.length === 0 && fit.unexpected.length === 0))) return;
  const parts = [
    fit.missing.length > 0 ? `missing: ${listed(fit.missing)}` : '',
    fit.unexpected.length > 0 ? `unexpected: ${listed(fit.unexpected)}` : '',
    fit.mismatched.length > 0
      ? `wrong shape: ${listed(fit.mismatched.map((m) => `${m.name} (expected [${m.expected.join(', ')}], found [${m.received.join(', ')}])`))}`
      : '',
  ].filter(Boolean);
  throw new CheckpointError(`[${context.plugin}] ${context.source} does not fit ${context.target}: ${parts.join('; ')}.${context.hint ? ` ${context.hint}` : ''}`, {
    plugin: context.plugin,
    missing: fit.missing,
    unexpected: fit.unexpected,
    mismatched: fit.mismatched,
  });
}
