import { ConfigError } from '@lora/core';
import { ACTIVATION_NAMES, isActivationName } from './activations.js';

/** The package name put in front of every error message. */
export const PACKAGE = '@lora/models';

/** A parsed `config.json`: a plain JSON object. */
export type ConfigJson = Readonly<Record<string, unknown>>;

/**
 * Typed reads of Hugging Face `config.json` fields. Each throws a `ConfigError` whose
 * `field` is the JSON key, so a wrong checkpoint says which entry is wrong.
 */
export class ConfigReader {
  constructor(
    readonly json: ConfigJson,
    readonly source: string,
  ) {}

  private fail(field: string, expected: string, hint?: string): never {
    throw new ConfigError({
      plugin: PACKAGE,
      field,
      received: this.json[field],
      expected: `${expected} (in ${this.source})`,
      hint,
    });
  }

  has(field: string): boolean {
    return this.json[field] !== undefined && this.json[field] !== null;
  }

  positiveInteger(field: string, fallback?: number): number {
    const value = this.json[field];
    if ((value === undefined || value === null) && fallback !== undefined) return fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) this.fail(field, 'a positive integer');
    return value;
  }

  number(field: string, fallback?: number): number {
    const value = this.json[field];
    if ((value === undefined || value === null) && fallback !== undefined) return fallback;
    if (typeof value !== 'number' || !Number.isFinite(value)) this.fail(field, 'a finite number');
    return value;
  }

  /** A finite number > 0 (a rotary base, a scaling factor). */
  positiveNumber(field: string, fallback?: number): number {
    const value = this.number(field, fallback);
    if (!(value > 0)) this.fail(field, 'a positive number', 'A value of 0 or below makes every logit NaN.');
    return value;
  }

  /** A finite number ≥ 0 (a normalisation epsilon). */
  nonNegativeNumber(field: string, fallback?: number): number {
    const value = this.number(field, fallback);
    if (!(value >= 0)) this.fail(field, 'a non-negative number (e.g. 1e-5)', 'A negative epsilon makes the normalisation take the square root of a negative number: NaN logits.');
    return value;
  }

  probability(field: string, fallback: number): number {
    const value = this.number(field, fallback);
    if (!(value >= 0 && value < 1)) this.fail(field, 'a dropout probability in [0, 1)');
    return value;
  }

  boolean(field: string, fallback: boolean): boolean {
    const value = this.json[field];
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'boolean') this.fail(field, 'true or false');
    return value;
  }

  string(field: string, fallback?: string): string {
    const value = this.json[field];
    if ((value === undefined || value === null) && fallback !== undefined) return fallback;
    if (typeof value !== 'string') this.fail(field, 'a string');
    return value;
  }

  /** A token id: an integer, a list of integers (first used by callers that need one), or null. */
  tokenIds(field: string): number[] | null {
    const value = this.json[field];
    if (value === undefined || value === null) return null;
    if (typeof value === 'number' && Number.isInteger(value)) return [value];
    if (Array.isArray(value) && value.every((v) => typeof v === 'number' && Number.isInteger(v))) return value as number[];
    this.fail(field, 'an integer token id, a list of them, or null');
  }

  /** Throw unless `condition` holds, naming `field`. */
  /** An activation name this package implements (see `ACTIVATION_NAMES`), so a bad one fails here, naming the file, before any layer is built. */
  activation(field: string, fallback: string): string {
    const name = this.string(field, fallback);
    this.require(isActivationName(name), field, `one of ${ACTIVATION_NAMES.join(', ')}`);
    return name;
  }

  require(condition: boolean, field: string, expected: string, hint?: string): void {
    if (!condition) this.fail(field, expected, hint);
  }
}
