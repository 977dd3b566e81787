import * as tf from '@tensorflow/tfjs-core';
import { checkLoadedTensors, entryToTensor, tensorToEntry, type SafetensorsEntry } from '@lora/core';
import { assertTensorsFit, compareTensorShapes } from '@lora/core/internal';
import { PACKAGE } from './config-fields.js';
import type { PretrainedModel } from './pretrained-model.js';

/** What {@link loadStateDict} matched, skipped or could not place. */
export interface LoadReport {
  /** Parameters of the model with no tensor in the checkpoint. */
  readonly missing: readonly string[];
  /** Checkpoint tensors that are not parameters of the model. */
  readonly unexpected: readonly string[];
  /**
   * Tensors whose shape differs from the parameter's: always empty in a returned report, since a
   * mis-shaped tensor throws a `CheckpointError` (whose `mismatched` lists them) even with `strict: false`.
   */
  readonly mismatched: readonly {
    /** The checkpoint key of the tensor (before any prefix change). */
    readonly name: string;
    /** Shape of the model's parameter. */
    readonly expected: readonly number[];
    /** Shape of the tensor in the checkpoint. */
    readonly received: readonly number[];
  }[];
  /** Checkpoint keys skipped on purpose: buffers (`attn.bias`), tied copies (`lm_head.weight`), or the head of a task checkpoint loaded into a bare trunk. */
  readonly ignored: readonly string[];
  /** Prefix added to (`+transformer`) or removed from (`-transformer`) checkpoint keys, or null. */
  readonly prefixChange: string | null;
  /** Dtypes found in the checkpoint, with counts (F16/BF16 are upcast to float32). */
  readonly dtypes: Readonly<Record<string, number>>;
}

/** Options for {@link loadStateDict}. */
export interface LoadStateDictOptions {
  /** Throw when anything is missing, unexpected or mis-shaped (default true). Mis-shaped tensors always throw. */
  readonly strict?: boolean;
  /** Load weights holding NaN or ±Infinity instead of throwing `NonFiniteTensorError` (default false). */
  readonly allowNonFinite?: boolean;
  /** The checkpoint file or directory, named in errors (default `The checkpoint`). */
  readonly source?: string;
}

function hasChild(model: PretrainedModel, name: string): boolean {
  return model.namedChildren().some(([child]) => child === name);
}

/**
 * Copy checkpoint tensors into a model's parameters by name, as transformers' `load_state_dict`:
 * keys are matched to `namedParameters()` paths, adding or removing the base-model prefix when a bare
 * trunk checkpoint meets a task model or the reverse. Nothing is assigned unless every tensor fits.
 *
 * @throws {CheckpointError} naming every missing, unexpected (strict) and mis-shaped tensor.
 */
export function loadStateDict(
  model: PretrainedModel,
  tensors: ReadonlyMap<string, SafetensorsEntry>,
  options: LoadStateDictOptions = {},
): LoadReport {
  const strict = options.strict ?? true;
  const parameters = new Map(model.namedParameters());
  const prefix = model.basePrefix;
  const keys = [...tensors.keys()];
  const modelHasPrefix = hasChild(model, prefix);
  const checkpointHasPrefix = keys.some((key) => key.startsWith(`${prefix}.`));
  let prefixChange: string | null = null;
  const ignored: string[] = [];
  const rename = new Map<string, string>();
  for (const key of keys) {
    let target = key;
    if (modelHasPrefix && !checkpointHasPrefix && !parameters.has(key)) {
      target = `${prefix}.${key}`;
      prefixChange = `+${prefix}`;
    } else if (!modelHasPrefix && checkpointHasPrefix) {
      prefixChange = `-${prefix}`;
      if (!key.startsWith(`${prefix}.`)) {
        ignored.push(key);
        continue;
      }
      target = key.slice(prefix.length + 1);
    }
    // Old TensorFlow-converted checkpoints (the original BERT) name LayerNorm parameters gamma and beta.
    if (!parameters.has(target)) {
      const legacy = target.replace(/\.gamma$/u, '.weight').replace(/\.beta$/u, '.bias');
      if (parameters.has(legacy)) target = legacy;
    }
    if (model.ignoredCheckpointKeys.some((pattern) => pattern.test(target)) || model.tiedCheckpointKeys.includes(target)) {
      ignored.push(key);
      continue;
    }
    rename.set(target, key);
  }
  // Compare by model name: the checkpoint's tensors under the names they load into.
  const renamed = new Map<string, SafetensorsEntry>();
  for (const [name, key] of rename) renamed.set(name, tensors.get(key)!);
  const fit = compareTensorShapes(new Map([...parameters].map(([name, variable]) => [name, variable.shape])), renamed);
  const dtypes: Record<string, number> = {};
  for (const [name] of parameters) {
    const entry = renamed.get(name);
    if (entry) dtypes[entry.dtype] = (dtypes[entry.dtype] ?? 0) + 1;
  }
  const missing = [...fit.missing];
  const unexpected = fit.unexpected.map((name) => rename.get(name) ?? name);
  const mismatched = fit.mismatched.map((m) => ({ ...m, name: rename.get(m.name) ?? m.name, expected: [...m.expected], received: [...m.received] }));
  assertTensorsFit(
    { missing, unexpected, mismatched },
    {
      plugin: PACKAGE,
      source: options.source === undefined ? 'The checkpoint' : `The checkpoint in ${options.source}`,
      target: model.architecture,
      strict,
      hint:
        'Check that config.json belongs to these weights' +
        (mismatched.length === 0 ? '; to keep freshly initialised values for missing tensors (e.g. a new classifier head), pass { strict: false }.' : '.'),
    },
  );
  // Only the tensors that become weights: ignored buffers may legitimately hold -Infinity masks.
  const assigned = new Map<string, SafetensorsEntry>();
  for (const [name, key] of rename) {
    const entry = tensors.get(key);
    if (parameters.has(name) && entry) assigned.set(key, entry);
  }
  checkLoadedTensors(assigned, { file: options.source, allowNonFinite: options.allowNonFinite, plugin: PACKAGE });
  // Every tensor decoded (and cast) before the first assignment: a tensor that cannot be decoded (an
  // I64 value beyond 2^53, a truncated buffer) throws while the model still holds its old weights.
  const decoded: [tf.Variable, tf.Tensor][] = [];
  try {
    for (const [name, variable] of parameters) {
      const key = rename.get(name);
      const entry = key === undefined ? undefined : tensors.get(key);
      if (!entry) continue;
      decoded.push([
        variable,
        tf.tidy(() => {
          const value = entryToTensor(entry, key);
          return value.dtype === variable.dtype ? value : tf.cast(value, variable.dtype);
        }),
      ]);
    }
    for (const [variable, value] of decoded) variable.assign(value);
  } finally {
    for (const [, value] of decoded) value.dispose();
  }
  return { missing, unexpected, mismatched, ignored, prefixChange, dtypes };
}

/**
 * The model's parameters as safetensors entries keyed like transformers' state dict (tied copies
 * left out, as `save_pretrained` does). Reads every variable synchronously.
 */
export function stateDict(model: PretrainedModel): Map<string, SafetensorsEntry> {
  const entries = new Map<string, SafetensorsEntry>();
  for (const [name, variable] of model.namedParameters()) entries.set(name, tensorToEntry(variable));
  return entries;
}
