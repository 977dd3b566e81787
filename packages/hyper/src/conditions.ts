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
}

function isVector(value: unknown): value is readonly number[] | Float32Array {
  return value instanceof Float32Array || (Array.isArray(value) && value.length > 0 && value.every((item) => typeof item === 'number'));
}

function isConditionList(spec: ConditionSpec, value: unknown): value is readonly Condition[] {
  if (!Array.isArray(value)) return false;
  return spec.kind === 'discrete' ? true : value.length > 0 && value.every((item) => isVector(item));
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
 * Validate one condition against the config's condition spec.
 * @throws {ConfigError} for an unknown factor or value (listing the known ones) or a vector of the wrong length.
 */
export function resolveCondition(spec: ConditionSpec, condition: Condition | null | undefined): ResolvedCondition {
  if (spec.kind === 'continuous') {
    if (!isVector(condition) || condition.length !== spec.size) {
      throw new ConfigError({
        plugin: 'hyper',
        field: 'condition',
        received: condition === undefined || condition === null ? condition : isVector(condition) ? `a vector of length ${condition.length}` : condition,
        expected: `a vector of ${spec.size} numbers (this HyperLoRA is conditioned on a continuous vector)`,
        hint: 'Pass inputs { condition: [0.1, …] } for the whole batch, or one vector per row.',
      });
    }
    const vector = Float32Array.from(condition);
    if (!vector.every((value) => Number.isFinite(value))) {
      throw new ConfigError({ plugin: 'hyper', field: 'condition', received: 'a vector with NaN or Infinity', expected: 'finite numbers' });
    }
    return { kind: 'continuous', vector };
  }
  const given = (condition ?? {}) as Readonly<Record<string, string | null | undefined>>;
  if (typeof given !== 'object' || isVector(given)) {
    throw new ConfigError({ plugin: 'hyper', field: 'condition', received: given, expected: 'an object { factor: value }', hint: `Known factors: ${knownFactors(spec)}.` });
  }
  for (const name of Object.keys(given)) {
    if (!spec.factors.some((factor) => factor.name === name)) {
      throw new ConfigError({ plugin: 'hyper', field: 'condition', received: name, expected: 'a known factor', hint: `Known factors: ${knownFactors(spec)}.` });
    }
  }
  const indices = spec.factors.map((factor) => {
    const value = given[factor.name];
    if (value === undefined || value === null) return 0;
    const index = factor.values.indexOf(value);
    if (index < 0) {
      throw new ConfigError({
        plugin: 'hyper',
        field: `condition.${factor.name}`,
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
 * generated once, and rows gather from it. `undefined` means "no condition" (all factors null).
 * @throws {ConfigError} for unknown factors or values; {ShapeError} when a per-row list does not match the batch size.
 */
export function batchConditions(spec: ConditionSpec, input: ConditionInput | undefined, options: BatchConditionsOptions = {}): ConditionBatch {
  const dropout = options.dropout ?? 0;
  const random = options.random ?? Math.random;
  const drop = (condition: ResolvedCondition): ResolvedCondition =>
    dropout > 0 && condition.kind === 'discrete' ? { kind: 'discrete', indices: condition.indices.map((index) => (random() < dropout ? 0 : index)) } : condition;
  if (!isConditionList(spec, input)) {
    if (dropout > 0 && options.batchSize !== undefined && options.batchSize > 1) {
      // Dropout draws per row, so one condition for the batch becomes per-row conditions.
      return batchConditions(spec, new Array<Condition | undefined>(options.batchSize).fill(input as Condition | undefined) as Condition[], options);
    }
    const single = drop(resolveCondition(spec, input as Condition | undefined));
    return { unique: [single], keys: [conditionKey(spec, single)], rowToUnique: null };
  }
  if (options.batchSize !== undefined && input.length !== options.batchSize) {
    throw new ShapeError(`[@lora/hyper] inputs.condition has one entry per batch row`, [options.batchSize], [input.length]);
  }
  const unique: ResolvedCondition[] = [];
  const keys: string[] = [];
  const byKey = new Map<string, number>();
  const rowToUnique = new Int32Array(input.length);
  input.forEach((raw, row) => {
    const condition = drop(resolveCondition(spec, raw));
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
  return { unique, keys, rowToUnique: unique.length === 1 ? null : rowToUnique };
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
    if (name in condition) throw new ConfigError({ plugin: 'hyper', field: 'condition', received: text, expected: `each factor once ("${name}" repeats)` });
    condition[name] = match[2]!.trim();
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
