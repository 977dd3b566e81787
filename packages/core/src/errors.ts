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
    // The class's own name: a bundler may rename a class that refers to itself (esbuild's `_SafetensorsError`).
    this.name = new.target.name.replace(/^_+/u, '');
    this.plugin = options.plugin ?? '@lora/core';
  }
}

/** A configuration value is missing, of the wrong type or out of range. */
export class ConfigError extends LoraError {
  /** The config field or option that was rejected, as named where it was given (e.g. `lora_alpha` in a file, `batchSize` in options). */
  readonly field: string;
  /** The rejected value as given, of any type (the message shows a short preview of it). */
  readonly received: unknown;
  /** What the field accepts, as a phrase completing "must be …" (e.g. `a positive integer`). */
  readonly expected: string;
  /** The fix suggested after the facts (e.g. `Pass e.g. { r: 8 }.`), when there is one. */
  readonly hint: string | undefined;

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
    this.hint = options.hint;
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
  | 'UNSUPPORTED_VALUE'
  | 'UNEXPECTED_DTYPE';

/** A safetensors file is malformed or holds something this library cannot represent. */
export class SafetensorsError extends LoraError {
  /** Which check the buffer failed, e.g. `TRUNCATED` or `SIZE_MISMATCH`; also shown in the message. */
  readonly code: SafetensorsErrorCode;
  /** The tensor the problem concerns, when there is one. */
  readonly tensor: string | undefined;
  /** The file, when the bytes came from one. */
  readonly file: string | undefined;
  /** The problem without the prefix naming code, file and tensor. */
  readonly detail: string;

  constructor(code: SafetensorsErrorCode, message: string, options: { tensor?: string; file?: string; cause?: unknown } = {}) {
    const where = [options.file ? ` in ${options.file}` : '', options.tensor ? ` in tensor ${describeValue(options.tensor)}` : ''].join('');
    super(`[@lora/core] Malformed safetensors (${code})${where}: ${message}`, { cause: options.cause });
    this.code = code;
    this.tensor = options.tensor;
    this.file = options.file;
    this.detail = message;
  }

  /** The same error, naming the file the bytes came from. */
  withFile(file: string): SafetensorsError {
    return new SafetensorsError(this.code, this.detail, { tensor: this.tensor, file, cause: this.cause });
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
  /** Tensor names the model or adapter expects but the file lacks; empty when none or not checked. */
  readonly missing: readonly string[];
  /** Tensor names in the file that nothing in the model or adapter expects; empty when none or not checked. */
  readonly unexpected: readonly string[];
  /** Tensors present under the expected name but with another shape; empty when none or not checked. */
  readonly mismatched: readonly {
    /** The tensor's name (key) in the file. */
    name: string;
    /** The shape the model or adapter expects. */
    expected: readonly number[];
    /** The shape the file holds. */
    received: readonly number[];
  }[];

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
  /** The dotted module path that was asked for (e.g. `transformer.h.0.attn.c_attn`), or the rejected child name when registering one. */
  readonly path: string;

  constructor(message: string, path: string) {
    super(message);
    this.path = path;
  }
}

/** Why {@link train} stopped early. */
export type TrainingStopReason = 'options' | 'non-finite-loss' | 'non-finite-gradient' | 'non-finite-parameters' | 'interrupted';

/** Training stopped: a bad option, a non-finite loss, gradient or parameter, or an interruption. */
export class TrainingError extends LoraError {
  /** The optimizer step at which training stopped (1-based), if it had started. */
  readonly step: number | undefined;
  /**
   * Why training stopped: a non-finite loss, gradient or parameters, `interrupted`, or `options`, the
   * default for every other cause (a bad option, an unusable checkpoint, a hook's invalid state).
   */
  readonly reason: TrainingStopReason;
  /**
   * Optimizer steps the model's weights now reflect: the last good state, which is also what was
   * checkpointed (0 = the weights training started from). Undefined for bad options.
   */
  readonly keptStep: number | undefined;
  /** Step of the newest checkpoint on disk, or null when none was written. */
  readonly checkpointStep: number | null;

  constructor(
    message: string,
    options: { step?: number; reason?: TrainingStopReason; keptStep?: number; checkpointStep?: number | null; cause?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.step = options.step;
    this.reason = options.reason ?? 'options';
    this.keptStep = options.keptStep;
    this.checkpointStep = options.checkpointStep ?? null;
  }
}

/** A loaded model or adapter holds NaN or ±Infinity (pass `allowNonFinite: true` to load it anyway). */
export class NonFiniteTensorError extends LoraError {
  /** The file the tensor came from, when known. */
  readonly file: string | undefined;
  /** The name of the tensor (its key in the file or model) that holds non-finite values. */
  readonly tensor: string;
  /** How many values are not finite. */
  readonly count: number;
  /** The first such value (NaN, Infinity or -Infinity). */
  readonly found: number;

  /**
   * With `saving`, the tensor was about to be written to `file` (and nothing was written); with
   * `merging` (the adapter's name), it is the weight a safe merge of that adapter would have made
   * (and the base was not changed); else it was read from `file`.
   */
  constructor(options: { file?: string; tensor: string; count: number; found: number; plugin?: string; saving?: boolean; merging?: string }) {
    const plugin = options.plugin ?? '@lora/core';
    const values = `tensor ${describeValue(options.tensor)} holds ${options.count} non-finite value${options.count === 1 ? '' : 's'} (first: ${options.found})`;
    super(
      options.merging !== undefined
        ? `[${plugin}] Not merging adapter ${describeValue(options.merging)}: the merged ${values}; the base weight was not changed. The adapter or the base holds non-finite weights (a diverged run, or weights loaded with allowNonFinite); retrain the adapter, or leave it unmerged.`
        : options.saving
          ? `[${plugin}] Not writing ${options.file ?? 'the weights'}: ${values}; nothing was written. Non-finite weights come from a diverged run or from non-finite weights loaded with allowNonFinite; retrain, or start from finite weights.`
          : `[${plugin}] ${options.file ? `${options.file}: ` : ''}${values}; expected finite weights. The file is corrupt or comes from a diverged run; pass allowNonFinite (CLI: --allow-non-finite) to load it anyway.`,
      { plugin: options.plugin },
    );
    this.file = options.file;
    this.tensor = options.tensor;
    this.count = options.count;
    this.found = options.found;
  }
}

/** Shapes of inputs do not agree. */
export class ShapeError extends LoraError {
  /** The shape that was required; `null` marks a dimension of any size (shown as `*` in the message). */
  readonly expected: readonly (number | null)[];
  /** The shape that was given. */
  readonly received: readonly number[];

  constructor(message: string, expected: readonly (number | null)[], received: readonly number[]) {
    super(`${message}: expected shape [${expected.map((d) => (d === null ? '*' : d)).join(', ')}], got [${received.join(', ')}].`);
    this.expected = expected;
    this.received = received;
  }
}

const PREVIEW_LIMIT = 80;
const PREVIEW_DEPTH = 3;
const PREVIEW_ITEMS = 8;

function preview(value: unknown, depth: number): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value.length > PREVIEW_LIMIT ? value.slice(0, PREVIEW_LIMIT) : value);
    case 'number':
    case 'boolean':
    case 'undefined':
    case 'symbol':
      return String(value);
    case 'bigint':
      return `${value}n`;
    case 'function':
      return 'a function';
    default:
      break;
  }
  // Bounded in depth and width: a value read from a file may nest thousands of levels deep, and
  // JSON.stringify would then throw RangeError instead of the error being described.
  if (Array.isArray(value)) {
    if (depth >= PREVIEW_DEPTH) return '[…]';
    const items = value.slice(0, PREVIEW_ITEMS).map((item) => preview(item, depth + 1));
    return `[${items.join(',')}${value.length > PREVIEW_ITEMS ? ',…' : ''}]`;
  }
  if (depth >= PREVIEW_DEPTH) return '{…}';
  const keys = Object.keys(value as object);
  const items = keys.slice(0, PREVIEW_ITEMS).map((key) => `${JSON.stringify(key)}:${preview((value as Record<string, unknown>)[key], depth + 1)}`);
  return `{${items.join(',')}${keys.length > PREVIEW_ITEMS ? ',…' : ''}}`;
}

/** A short, one-line description of any value for an error message (bounded: never throws). */
export function describeValue(value: unknown): string {
  let text: string;
  try {
    text = preview(value, 0);
  } catch {
    text = Object.prototype.toString.call(value);
  }
  return text.length > PREVIEW_LIMIT ? `${text.slice(0, PREVIEW_LIMIT - 3)}...` : text;
}
