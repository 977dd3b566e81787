/**
 * The one error hierarchy of @lora/*. Every error a user can cause is a `LoraError` whose
 * message says what failed, what was received and how to fix it; subclasses carry the
 * same facts as structured fields so programs can react without parsing text.
 */
export class LoraError extends Error {
  /** The package or plugin that raised the error, e.g. `@lora/core` or `lora`. */
  readonly plugin: string;

  constructor(message: string, options: { plugin?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.plugin = options.plugin ?? '@lora/core';
  }
}

/** A configuration value is missing, of the wrong type or out of range. */
export class ConfigError extends LoraError {
  readonly field: string;
  readonly received: unknown;
  readonly expected: string;

  constructor(options: {
    plugin?: string;
    field: string;
    received: unknown;
    expected: string;
    hint?: string;
    cause?: unknown;
  }) {
    const plugin = options.plugin ?? '@lora/core';
    super(
      `[${plugin}] Invalid config: ${options.field} must be ${options.expected}, got ${describeValue(options.received)}.` +
        (options.hint ? ` ${options.hint}` : ''),
      { plugin, cause: options.cause },
    );
    this.field = options.field;
    this.received = options.received;
    this.expected = options.expected;
  }
}

/** Why a safetensors buffer was rejected. */
export type SafetensorsErrorCode =
  | 'TRUNCATED'
  | 'HEADER_TOO_LARGE'
  | 'INVALID_HEADER'
  | 'UNKNOWN_DTYPE'
  | 'INVALID_SHAPE'
  | 'INVALID_OFFSETS'
  | 'SIZE_MISMATCH'
  | 'UNSUPPORTED_VALUE';

/** A safetensors file is malformed or holds something this library cannot represent. */
export class SafetensorsError extends LoraError {
  readonly code: SafetensorsErrorCode;
  /** The tensor the problem concerns, when there is one. */
  readonly tensor: string | undefined;

  constructor(code: SafetensorsErrorCode, message: string, options: { tensor?: string; cause?: unknown } = {}) {
    super(`[@lora/core] Malformed safetensors (${code})${options.tensor ? ` in tensor "${options.tensor}"` : ''}: ${message}`, {
      cause: options.cause,
    });
    this.code = code;
    this.tensor = options.tensor;
  }
}

/** A plugin is missing from the registry, registered twice, or a recipe combines what cannot be combined. */
export class RegistryError extends LoraError {
  /** The npm package that provides the missing plugin, when known. */
  readonly packageName: string | undefined;

  constructor(message: string, options: { packageName?: string; plugin?: string } = {}) {
    super(message, { plugin: options.plugin });
    this.packageName = options.packageName;
  }
}

/** Tensors in a checkpoint or adapter do not fit the model: missing, unexpected or mis-shaped. */
export class CheckpointError extends LoraError {
  readonly missing: readonly string[];
  readonly unexpected: readonly string[];
  readonly mismatched: readonly { name: string; expected: readonly number[]; received: readonly number[] }[];

  constructor(
    message: string,
    details: {
      missing?: readonly string[];
      unexpected?: readonly string[];
      mismatched?: readonly { name: string; expected: readonly number[]; received: readonly number[] }[];
      plugin?: string;
      cause?: unknown;
    } = {},
  ) {
    super(message, { plugin: details.plugin, cause: details.cause });
    this.missing = details.missing ?? [];
    this.unexpected = details.unexpected ?? [];
    this.mismatched = details.mismatched ?? [];
  }
}

/** A module path does not exist, or a module is not of the kind an operation needs. */
export class ModuleError extends LoraError {
  readonly path: string;

  constructor(message: string, path: string) {
    super(message);
    this.path = path;
  }
}

/** Training stopped: a non-finite loss, or a bad training option. */
export class TrainingError extends LoraError {
  /** The optimizer step at which training stopped, if it had started. */
  readonly step: number | undefined;

  constructor(message: string, options: { step?: number; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.step = options.step;
  }
}

/** Shapes of inputs do not agree. */
export class ShapeError extends LoraError {
  readonly expected: readonly (number | null)[];
  readonly received: readonly number[];

  constructor(message: string, expected: readonly (number | null)[], received: readonly number[]) {
    super(`${message}: expected shape [${expected.map((d) => (d === null ? '*' : d)).join(', ')}], got [${received.join(', ')}].`);
    this.expected = expected;
    this.received = received;
  }
}

export function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === undefined) return 'undefined';
  try {
    const text = JSON.stringify(value);
    return text === undefined ? String(value) : text.length > 80 ? `${text.slice(0, 77)}...` : text;
  } catch {
    return String(value);
  }
}
