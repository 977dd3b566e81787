import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, LayerNorm, ShapeError } from '@lora/core';
import type { ConditionSpec } from './hyper-config.js';

/**
 * One condition as a caller passes it: for discrete factors an object `{ factor: value }` (a
 * missing or null factor uses its learned null embedding); for a continuous condition a vector.
 */
export type Condition = Readonly<Record<string, string | null | undefined>> | readonly number[] | Float32Array;

/**
 * The per-forward input a HyperLoRA reads from `AdapterInputs.condition`: one condition for the
 * whole batch, or an array with one condition per batch row.
 */
export type ConditionInput = Condition | readonly Condition[];

/** A condition after validation: factor indices (0 = null, value i → i + 1) or a float vector. */
export type ResolvedCondition =
  | {
      /** Discriminant: a condition on discrete factors, given by `indices`. */
      readonly kind: 'discrete';
      /** Per factor in the config's order, its embedding-table row: 0 for null, value i → i + 1. */
      readonly indices: readonly number[];
    }
  | {
      /** Discriminant: a continuous condition, given by `vector`. */
      readonly kind: 'continuous';
      /** The condition vector as float32 (length: the spec's `size`; finite). */
      readonly vector: Float32Array;
    };

/** The conditions of one forward pass after deduplication. */
export interface ConditionBatch {
  /** The distinct conditions, in order of first appearance. */
  readonly unique: readonly ResolvedCondition[];
  /** Their canonical keys ({@link conditionKey}). */
  readonly keys: readonly string[];
  /** For each batch row, the index of its condition in `unique`; null when one condition serves the whole batch. */
  readonly rowToUnique: Int32Array | null;
  /**
   * The batch size a per-row list implies (its length, which the input's first axis must equal,
   * also when every entry is the same condition and `rowToUnique` is null); null when one condition
   * object (not a list) was given for the whole batch, whatever its size.
   */
  readonly rows: number | null;
}

function isVector(value: unknown): value is readonly number[] | Float32Array {
  return value instanceof Float32Array || (Array.isArray(value) && value.length > 0 && value.every((item) => typeof item === 'number'));
}

function isConditionList(spec: ConditionSpec, value: unknown): value is readonly Condition[] {
  if (!Array.isArray(value)) return false;
  // An array of numbers is one vector (for a discrete spec, an error about the whole input); any
  // other array is a list of rows, each validated on its own (errors name the row).
  const numbers = value.length > 0 && value.every((item) => typeof item === 'number');
  return spec.kind === 'discrete' ? !numbers : value.length > 0 && !numbers;
}

/** What a condition should look like, for messages. */
function expectedCondition(spec: ConditionSpec): string {
  return spec.kind === 'discrete' ? 'an object { factor: value }' : `a vector of ${spec.size} numbers (an array or Float32Array)`;
}

/**
 * A ConfigError for a condition that is a tfjs tensor: core's value preview would show the tensor's
 * internals (`"kept"`), so the message says it got a tensor and what to pass instead.
 */
function tensorConditionError(spec: ConditionSpec, field: string, tensor: tf.Tensor): ConfigError {
  const hint =
    spec.kind === 'discrete'
      ? `Pass plain objects, e.g. { ${spec.factors[0]!.name}: '${spec.factors[0]!.values[0]!}' }.`
      : 'Pass plain numbers: read the tensor with await tensor.array() (or arraySync()) first.';
  const error = new ConfigError({ plugin: 'hyper', field, received: `a tf.Tensor of shape [${tensor.shape.join(', ')}]`, expected: expectedCondition(spec), hint });
  error.message = `[hyper] Invalid config: ${field} must be ${expectedCondition(spec)}, got a tf.Tensor of shape [${tensor.shape.join(', ')}]. ${hint}`;
  return error;
}

/** Lower-case hex of `bytes` (no Node `Buffer`: this package also runs in browsers). */
function hexOf(bytes: Uint8Array): string {
  let hex = '';
  for (const byte of bytes) hex += byte.toString(16).padStart(2, '0');
  return hex;
}

/**
 * The canonical key of a resolved condition: `factor=value|factor=value` in the config's factor
 * order (an empty value for a null factor), or `vector:` and the float32 bytes in hex.
 */
export function conditionKey(spec: ConditionSpec, condition: ResolvedCondition): string {
  if (condition.kind === 'continuous') return `vector:${hexOf(new Uint8Array(condition.vector.buffer, condition.vector.byteOffset, condition.vector.byteLength))}`;
  if (spec.kind !== 'discrete') throw new Error('unreachable: discrete condition for a continuous spec');
  return spec.factors.map((factor, i) => `${factor.name}=${condition.indices[i]! === 0 ? '' : factor.values[condition.indices[i]! - 1]!}`).join('|');
}

function knownFactors(spec: ConditionSpec): string {
  if (spec.kind !== 'discrete') return '';
  return spec.factors.map((factor) => `${factor.name} (${factor.values.join(', ')})`).join('; ');
}

/**
 * Validate one condition against the config's condition spec. For discrete factors a factor left
 * out (or null) takes its learned null embedding, so `{}` (and null or undefined here) is every
 * factor null; factor names are read as own properties only (`toString` is a valid factor name).
 * @throws {ConfigError} for an unknown factor or value (listing the known ones), a vector of the
 *   wrong length, or a tf.Tensor (pass plain values).
 */
export function resolveCondition(spec: ConditionSpec, condition: Condition | null | undefined): ResolvedCondition {
  return resolveConditionAt(spec, condition, 'condition');
}

/** {@link resolveCondition} naming the condition `field` in errors (`condition`, or `condition[2]` for a row of a list). */
function resolveConditionAt(spec: ConditionSpec, condition: Condition | null | undefined, field: string): ResolvedCondition {
  if (condition instanceof tf.Tensor) throw tensorConditionError(spec, field, condition);
  if (spec.kind === 'continuous') {
    if (!isVector(condition) || condition.length !== spec.size) {
      throw new ConfigError({
        plugin: 'hyper',
        field,
        received: condition === undefined || condition === null ? condition : isVector(condition) ? `a vector of length ${condition.length}` : condition,
        expected: `a vector of ${spec.size} numbers (this HyperLoRA is conditioned on a continuous vector)`,
        hint: 'Pass inputs { condition: [0.1, …] } for the whole batch, or one vector per row.',
      });
    }
    const vector = Float32Array.from(condition);
    if (!vector.every((value) => Number.isFinite(value))) {
      throw new ConfigError({ plugin: 'hyper', field, received: 'a vector with NaN or Infinity', expected: 'finite numbers' });
    }
    return { kind: 'continuous', vector };
  }
  const given = (condition ?? {}) as Readonly<Record<string, string | null | undefined>>;
  if (typeof given !== 'object' || isVector(given)) {
    throw new ConfigError({ plugin: 'hyper', field, received: given, expected: 'an object { factor: value }', hint: `Known factors: ${knownFactors(spec)}.` });
  }
  for (const name of Object.keys(given)) {
    if (!spec.factors.some((factor) => factor.name === name)) {
      throw new ConfigError({ plugin: 'hyper', field, received: name, expected: 'a known factor', hint: `Known factors: ${knownFactors(spec)}.` });
    }
  }
  const indices = spec.factors.map((factor) => {
    // Own properties only: a factor named like an Object.prototype member (toString, constructor)
    // that the condition leaves out must read as missing, not as the inherited function.
    const value = Object.hasOwn(given, factor.name) ? given[factor.name] : undefined;
    if (value === undefined || value === null) return 0;
    const index = typeof value === 'string' ? factor.values.indexOf(value) : -1;
    if (index < 0) {
      throw new ConfigError({
        plugin: 'hyper',
        field: `${field}.${factor.name}`,
        received: value,
        expected: `one of ${factor.values.map((v) => JSON.stringify(v)).join(', ')}`,
        hint: `Known factors: ${knownFactors(spec)}.`,
      });
    }
    return index + 1;
  });
  return { kind: 'discrete', indices };
}

/** Options for {@link batchConditions}. */
export interface BatchConditionsOptions {
  /** The batch size; when given, a per-row list must have exactly this many entries. */
  readonly batchSize?: number;
  /** Probability of replacing each factor of each row by null (condition dropout; default 0). */
  readonly dropout?: number;
  /** Uniform numbers in [0, 1) for the dropout draws (default `Math.random`). */
  readonly random?: () => number;
}

/**
 * Validate the conditions of one forward pass and deduplicate them: each distinct condition is
 * generated once, and rows gather from it. `undefined` means "no condition" (all factors null);
 * a HyperLoRA forward pass refuses it before calling this (pass `{}` to ask for every factor null).
 * A list keeps its length in `rows` (checked against the input's batch), even when every entry is
 * the same condition; an entry of a list may not be null or undefined (`{}` asks for every factor null).
 * @throws {ConfigError} for unknown factors or values, an empty list, a missing list entry or a tensor;
 *   {ShapeError} when a per-row list does not match `batchSize`.
 */
export function batchConditions(spec: ConditionSpec, input: ConditionInput | undefined, options: BatchConditionsOptions = {}): ConditionBatch {
  const dropout = options.dropout ?? 0;
  const random = options.random ?? Math.random;
  const drop = (condition: ResolvedCondition): ResolvedCondition =>
    dropout > 0 && condition.kind === 'discrete' ? { kind: 'discrete', indices: condition.indices.map((index) => (random() < dropout ? 0 : index)) } : condition;
  if (Array.isArray(input) && input.length === 0) {
    throw new ConfigError({
      plugin: 'hyper',
      field: 'condition',
      received: input,
      expected: 'one condition for the whole batch, or a list with one condition per batch row',
      hint: `Pass e.g. { condition: ${spec.kind === 'discrete' ? `{ ${spec.factors[0]!.name}: '${spec.factors[0]!.values[0]!}' }` : '[0.1, …]'} }.`,
    });
  }
  if (!isConditionList(spec, input)) {
    if (dropout > 0 && options.batchSize !== undefined && options.batchSize > 1) {
      // Dropout draws per row, so one condition for the batch becomes per-row conditions.
      const perRow = batchConditions(spec, new Array<Condition | undefined>(options.batchSize).fill(input as Condition | undefined) as Condition[], options);
      return { ...perRow, rows: null };
    }
    const single = drop(resolveCondition(spec, input as Condition | undefined));
    return { unique: [single], keys: [conditionKey(spec, single)], rowToUnique: null, rows: null };
  }
  if (options.batchSize !== undefined && input.length !== options.batchSize) {
    throw new ShapeError(`[@lora/hyper] inputs.condition has one entry per batch row`, [options.batchSize], [input.length]);
  }
  const unique: ResolvedCondition[] = [];
  const keys: string[] = [];
  const byKey = new Map<string, number>();
  const rowToUnique = new Int32Array(input.length);
  input.forEach((raw, row) => {
    if (raw === undefined || raw === null) {
      throw new ConfigError({
        plugin: 'hyper',
        field: `condition[${row}]`,
        received: raw,
        expected: `${expectedCondition(spec)} (one per batch row)`,
        hint: spec.kind === 'discrete' ? 'Pass {} for a row with every factor at its learned null embedding.' : 'Pass a vector for every row.',
      });
    }
    const condition = drop(resolveConditionAt(spec, raw, `condition[${row}]`));
    const key = conditionKey(spec, condition);
    let index = byKey.get(key);
    if (index === undefined) {
      index = unique.length;
      byKey.set(key, index);
      unique.push(condition);
      keys.push(key);
    }
    rowToUnique[row] = index;
  });
  return { unique, keys, rowToUnique: unique.length === 1 ? null : rowToUnique, rows: input.length };
}

/**
 * Parse the CLI form `factor=value[,factor=value]` into a condition object.
 * @throws {ConfigError} when an entry is not `factor=value` or a factor repeats.
 */
export function parseConditionText(text: string): Record<string, string> {
  const condition: Record<string, string> = {};
  for (const part of text.split(',').map((item) => item.trim()).filter((item) => item.length > 0)) {
    const match = /^([^=]+)=(.+)$/u.exec(part);
    if (!match) {
      throw new ConfigError({ plugin: 'hyper', field: 'condition', received: part, expected: 'factor=value', hint: 'Write factor=value pairs separated by commas, e.g. party=Democratic,era=modern.' });
    }
    const name = match[1]!.trim();
    // Own properties only, defined rather than assigned: `constructor=x` is not a repeat (`in` sees
    // the prototype), and `__proto__=x` is kept as a factor (assignment would set the prototype).
    if (Object.hasOwn(condition, name)) throw new ConfigError({ plugin: 'hyper', field: 'condition', received: text, expected: `each factor once ("${name}" repeats)` });
    Object.defineProperty(condition, name, { value: match[2]!.trim(), enumerable: true, writable: true, configurable: true });
  }
  return condition;
}

/**
 * The condition encoder: discrete factors → concatenated embeddings (table f has V_f + 1 rows,
 * row 0 the learned null embedding); continuous → `LayerNorm(Linear(size → dim))`.
 * Parameters: Σ_f (V_f + 1)·e_f, or size·dim + dim + 2·dim.
 */
export class ConditionEncoder {
  /** The config's condition spec this encoder was built for (discrete factors or a continuous vector). */
  readonly spec: ConditionSpec;
  /** Width e of the encoded condition. */
  readonly width: number;
  private readonly tables: tf.Variable[] = [];
  private readonly projection: { weight: tf.Variable; bias: tf.Variable; norm: LayerNorm } | null = null;

  constructor(spec: ConditionSpec, seed: number) {
    this.spec = spec;
    if (spec.kind === 'discrete') {
      this.width = spec.factors.reduce((sum, factor) => sum + factor.dim, 0);
      spec.factors.forEach((factor, i) => {
        this.tables.push(tf.tidy(() => tf.variable(tf.randomNormal([factor.values.length + 1, factor.dim], 0, 1, 'float32', seed + i))));
      });
    } else {
      this.width = spec.dim;
      const bound = 1 / Math.sqrt(spec.size);
      this.projection = {
        weight: tf.tidy(() => tf.variable(tf.randomUniform([spec.dim, spec.size], -bound, bound, 'float32', seed))),
        bias: tf.tidy(() => tf.variable(tf.zeros([spec.dim]))),
        norm: new LayerNorm({ dim: spec.dim }),
      };
    }
  }

  /** The encoder's variables under their saved keys (relative to the state prefix). */
  namedTensors(): [string, tf.Variable][] {
    if (this.projection) {
      const norm = this.projection.norm.namedParameters().map(([name, variable]) => [`condition.norm.${name}`, variable] as [string, tf.Variable]);
      return [['condition.proj.weight', this.projection.weight], ['condition.proj.bias', this.projection.bias], ...norm];
    }
    const spec = this.spec as Extract<ConditionSpec, { kind: 'discrete' }>;
    return this.tables.map((table, i) => [`condition.${spec.factors[i]!.name}.weight`, table]);
  }

  /** Encode resolved conditions to [u, e]. Tensors are the caller's (use inside a tidy). */
  encode(conditions: readonly ResolvedCondition[]): tf.Tensor2D {
    return tf.tidy(() => {
      if (this.projection) {
        const vectors = new Float32Array(conditions.length * (this.spec as { size: number }).size);
        conditions.forEach((condition, i) => vectors.set((condition as Extract<ResolvedCondition, { kind: 'continuous' }>).vector, i * (this.spec as { size: number }).size));
        const x = tf.tensor2d(vectors, [conditions.length, (this.spec as { size: number }).size]);
        const projected = tf.add(tf.matMul(x, this.projection.weight as tf.Tensor2D, false, true), this.projection.bias);
        return this.projection.norm.forward(projected) as tf.Tensor2D;
      }
      const parts = this.tables.map((table, f) => {
        const indices = tf.tensor1d(
          conditions.map((condition) => (condition as Extract<ResolvedCondition, { kind: 'discrete' }>).indices[f]!),
          'int32',
        );
        return tf.gather(table, indices);
      });
      return (parts.length === 1 ? parts[0]! : tf.concat(parts, 1)) as tf.Tensor2D;
    });
  }

  /** Free the embedding tables and the projection. */
  dispose(): void {
    for (const table of this.tables) table.dispose();
    if (this.projection) {
      this.projection.weight.dispose();
      this.projection.bias.dispose();
      this.projection.norm.dispose();
    }
  }
}
