import { ConfigError } from './errors.js';

/**
 * Refuse layer sizes that are not positive integers, naming the option, before any tensor is made
 * (tfjs would fail later with its own shape message, or accept a size of 0).
 * @throws {ConfigError} for the first such field.
 */
export function checkLayerSizes<K extends string>(options: Readonly<Record<K, number>>, fields: readonly K[], hint: string): void {
  for (const field of fields) {
    const value = options[field];
    if (!Number.isInteger(value) || value < 1) throw new ConfigError({ field, received: value, expected: 'a positive integer', hint });
  }
}
