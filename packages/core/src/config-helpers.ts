import { z } from 'zod';
import { ConfigError } from './errors.js';
import type { PeftConfigJson } from './plugin.js';

/** `loraAlpha` → `lora_alpha`. */
export function camelToSnake(name: string): string {
  return name.replace(/[A-Z]/gu, (letter) => `_${letter.toLowerCase()}`);
}

/** `lora_alpha` → `loraAlpha`. */
export function snakeToCamel(name: string): string {
  return name.replace(/_([a-z0-9])/gu, (_, letter: string) => letter.toUpperCase());
}

/** Whether `pattern`, placed in `template` at `$`, compiles as the `u`-flag RegExp matching uses. */
export function isValidPattern(pattern: string, template = '^(?:$)$'): boolean {
  try {
    new RegExp(template.replace('$', () => pattern), 'u');
    return true;
  } catch {
    return false;
  }
}

/** A non-empty string that compiles as a regular expression inside `template` (see {@link isValidPattern}). */
export function regexString(template?: string): z.ZodEffects<z.ZodString, string, string> {
  return z.string().min(1).refine((value) => isValidPattern(value, template), { message: 'a valid regular expression' });
}

/** Zod schema of the target-selection fields shared by every adapter config (defaults as PEFT's). */
export const targetSelectionShape = {
  targetModules: z.union([z.array(z.string().min(1)).min(1), regexString()]).nullable().default(null),
  excludeModules: z.union([z.array(z.string().min(1)), regexString()]).nullable().default(null),
  layersToTransform: z.union([z.number().int().nonnegative(), z.array(z.number().int().nonnegative())]).nullable().default(null),
  layersPattern: z.union([regexString('$\\.(\\d+)\\.'), z.array(regexString('$\\.(\\d+)\\.'))]).nullable().default(null),
  modulesToSave: z.array(regexString('^(?:|.*\\.)$(?:$|\\..*)')).nullable().default(null),
} as const;

/** Zod schema of the fields of {@link AdapterConfigBase} besides target selection. */
export const adapterBaseShape = {
  ...targetSelectionShape,
  bias: z.enum(['none', 'all', 'lora_only']).default('none'),
  taskType: z.string().nullable().default(null),
  baseModelNameOrPath: z.string().nullable().default(null),
  inferenceMode: z.boolean().default(false),
  extraPeftFields: z.record(z.unknown()).default({}),
} as const;

/** PEFT's cross-field checks on target selection, as a zod refinement. */
export function refineTargetSelection(
  value: { targetModules: unknown; layersToTransform: unknown; layersPattern: unknown },
  context: z.RefinementCtx,
): void {
  if (typeof value.targetModules === 'string' && (value.layersToTransform !== null || value.layersPattern !== null)) {
    context.addIssue({
      code: z.ZodIssueCode.custom,
      path: ['layersToTransform'],
      message: 'unset when targetModules is a regex string (PEFT applies layer filters only to list targets)',
    });
  }
  if (value.layersPattern !== null && value.layersToTransform === null) {
    context.addIssue({ code: z.ZodIssueCode.custom, path: ['layersPattern'], message: 'used only together with layersToTransform' });
  }
}

const TYPE_NAMES: Readonly<Record<string, string>> = { array: 'a list', string: 'a string', number: 'a number', boolean: 'a boolean', object: 'an object', null: 'null' };

/**
 * The most specific issue of a union: a branch whose type matched but whose value did not (e.g. a
 * string that is not a valid regex) says more than "of type array or string".
 */
function specificIssue(issue: z.ZodIssue): z.ZodIssue {
  if (issue.code !== z.ZodIssueCode.invalid_union) return issue;
  const firsts = issue.unionErrors.map((error) => error.issues[0]).filter((first): first is z.ZodIssue => first !== undefined);
  // A literal or enum branch that did not match says only its own values: the union lists every branch.
  const unspecific: readonly string[] = [z.ZodIssueCode.invalid_type, z.ZodIssueCode.invalid_union, z.ZodIssueCode.invalid_literal, z.ZodIssueCode.invalid_enum_value];
  const matchedType = firsts.find((first) => !unspecific.includes(first.code));
  return matchedType ?? issue;
}

function expectedFromIssue(issue: z.ZodIssue): string {
  switch (issue.code) {
    case z.ZodIssueCode.invalid_union: {
      const types = new Set<string>();
      for (const error of issue.unionErrors) {
        const first = error.issues[0];
        if (first?.code === z.ZodIssueCode.invalid_type) types.add(TYPE_NAMES[first.expected] ?? first.expected);
        else if (first?.code === z.ZodIssueCode.invalid_literal) types.add(JSON.stringify(first.expected));
        else if (first?.code === z.ZodIssueCode.invalid_enum_value) for (const option of first.options) types.add(JSON.stringify(option));
        else if (first) return expectedFromIssue(first);
      }
      return [...types].join(' or ') || 'a valid value';
    }
    case z.ZodIssueCode.invalid_type:
      return `of type ${issue.expected}`;
    case z.ZodIssueCode.too_small:
      return issue.type === 'number'
        ? `${issue.inclusive ? '>=' : '>'} ${String(issue.minimum)}`
        : `at least ${String(issue.minimum)} long`;
    case z.ZodIssueCode.too_big:
      return issue.type === 'number' ? `${issue.inclusive ? '<=' : '<'} ${String(issue.maximum)}` : `at most ${String(issue.maximum)} long`;
    case z.ZodIssueCode.invalid_enum_value:
      return `one of ${issue.options.map((o) => JSON.stringify(o)).join(', ')}`;
    case z.ZodIssueCode.invalid_union_discriminator:
      // zod's own text ("Invalid discriminator value. Expected 'a' | 'b'") does not read after "must be".
      return `one of ${issue.options.map((o) => JSON.stringify(o)).join(', ')}`;
    case z.ZodIssueCode.invalid_literal:
      // zod's own text ("Invalid literal value, expected false") does not read after "must be".
      return JSON.stringify(issue.expected);
    case z.ZodIssueCode.unrecognized_keys:
      return 'a known option';
    default:
      return issue.message;
  }
}

function valueAt(input: unknown, path: readonly (string | number)[]): unknown {
  let current = input;
  for (const segment of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<string | number, unknown>)[segment];
  }
  return current;
}

/**
 * Validate `input` with a zod schema and turn the first problem into a {@link ConfigError} naming
 * the field, what was received, what was expected, and an example of a valid value.
 */
export function parseConfigWithSchema<T>(
  schema: z.ZodType<T, z.ZodTypeDef, unknown>,
  input: unknown,
  options: { plugin: string; examples?: Readonly<Record<string, string>>; fieldName?: (path: string) => string },
): T {
  const result = schema.safeParse(input ?? {});
  if (result.success) return result.data;
  const issue = specificIssue(result.error.issues[0]!);
  let path = issue.path.join('.');
  let received = valueAt(input, issue.path);
  if (issue.code === z.ZodIssueCode.unrecognized_keys) {
    path = issue.keys.join(', ');
    received = issue.keys.length === 1 ? valueAt(input, [...issue.path, issue.keys[0]!]) : issue.keys;
  }
  const top = String(issue.path[0] ?? path);
  const field = options.fieldName ? options.fieldName(path) : path;
  const example = options.examples?.[top];
  return (() => {
    throw new ConfigError({
      plugin: options.plugin,
      field: field || '(config)',
      received,
      expected: issue.code === z.ZodIssueCode.unrecognized_keys ? 'a known option (check the spelling)' : expectedFromIssue(issue),
      hint: example ? `Pass e.g. { ${field}: ${example} }.` : undefined,
    });
  })();
}

/**
 * Split a PEFT JSON object into camelCase fields the schema knows and the rest (kept verbatim in
 * `extraPeftFields`, so saving again writes them back).
 */
export function peftJsonToOptions(json: PeftConfigJson, knownFields: readonly string[]): Record<string, unknown> {
  const options: Record<string, unknown> = {};
  const extra: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(json)) {
    if (key === 'peft_type') continue;
    const camel = snakeToCamel(key);
    if (knownFields.includes(camel) && camel !== 'extraPeftFields') {
      // PEFT writes null for unset fields that we default differently; undefined lets the schema default apply.
      options[camel] = value === null && !NULLABLE_FIELDS.has(camel) ? undefined : value;
    } else extra[key] = value;
  }
  options['extraPeftFields'] = extra;
  return options;
}

const NULLABLE_FIELDS = new Set([
  'targetModules',
  'excludeModules',
  'layersToTransform',
  'layersPattern',
  'modulesToSave',
  'taskType',
  'baseModelNameOrPath',
  'revision',
]);

/** Write a config as PEFT does: snake_case keys, `peft_type`, extra fields back in, keys sorted, `inference_mode: true`. */
export function optionsToPeftJson(peftType: string, configObject: object): PeftConfigJson {
  const config = configObject as Readonly<Record<string, unknown>>;
  const out: Record<string, unknown> = { ...(config['extraPeftFields'] as Record<string, unknown> | undefined) };
  for (const [key, value] of Object.entries(config)) {
    if (key === 'extraPeftFields') continue;
    out[camelToSnake(key)] = value;
  }
  out['peft_type'] = peftType;
  out['inference_mode'] = true;
  const sorted: Record<string, unknown> = {};
  for (const key of Object.keys(out).sort()) sorted[key] = out[key];
  return sorted as PeftConfigJson;
}
