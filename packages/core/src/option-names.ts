import { ConfigError } from './errors.js';

/** What an options object may hold, for {@link checkOptionNames}. */
export interface OptionNames {
  /** The class or function the options are for, e.g. `AdamW`. */
  readonly owner: string;
  /** Package named in errors. */
  readonly plugin: string;
  /** Each option that must be a number, with an example value for the hint. */
  readonly numbers: Readonly<Record<string, string>>;
  /** Options of other types (checked by their owner). */
  readonly others?: readonly string[];
  /** Other libraries' names (PyTorch's, bitsandbytes') for the options, to the name to use. */
  readonly renames?: Readonly<Record<string, string>>;
}

/** PyTorch's names for AdamW's options (`betas` is handled apart: it is two of ours). */
export const PYTORCH_ADAMW_RENAMES: Readonly<Record<string, string>> = { lr: 'learningRate', learning_rate: 'learningRate', eps: 'epsilon', weight_decay: 'weightDecay' };

function shown(value: unknown): string {
  return typeof value === 'number' ? String(value) : (JSON.stringify(value) ?? String(value));
}

/**
 * Refuse an options object that is not a plain object, a key that is not an option (an option it
 * would ignore, so its default would run silently: PyTorch's `lr`, `betas`, `eps`, … name the option
 * to use), and a number option that is not a number (`undefined` is an absent option). One
 * {@link ConfigError} in one line, for the first problem.
 */
export function checkOptionNames(options: unknown, names: OptionNames): void {
  const invalid = (field: string, received: unknown, expected: string, hint: string): ConfigError =>
    new ConfigError({ plugin: names.plugin, field, received, expected, hint });
  const numbers = Object.keys(names.numbers);
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw invalid('options', options, 'an object', `Pass e.g. new ${names.owner}({ ${numbers[0]}: ${names.numbers[numbers[0]!]} }).`);
  }
  const known = `one of ${names.owner}'s options (${[...numbers, ...(names.others ?? [])].join(', ')})`;
  for (const [key, value] of Object.entries(options)) {
    if (numbers.includes(key)) {
      if (value !== undefined && typeof value !== 'number') throw invalid(key, value, 'a number', `Pass e.g. { ${key}: ${names.numbers[key]} }.`);
      continue;
    }
    if (names.others?.includes(key)) continue;
    if (key === 'betas' && numbers.includes('beta1')) {
      const pair = Array.isArray(value) && value.length === 2 ? (value as unknown[]) : [0.9, 0.999];
      throw invalid(key, value, known, `betas is PyTorch's name: pass { beta1: ${shown(pair[0])}, beta2: ${shown(pair[1])} }.`);
    }
    const renamed = names.renames?.[key];
    if (renamed) throw invalid(key, value, known, `${key} is PyTorch's name: pass { ${renamed}: ${value === undefined ? names.numbers[renamed] : shown(value)} }.`);
    throw invalid(key, value, known, 'Remove it or fix its spelling.');
  }
}
