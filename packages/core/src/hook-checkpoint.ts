import * as tf from '@tensorflow/tfjs-core';
import { CheckpointError, TrainingError } from './errors.js';
import { countNonFinite } from './finite.js';
import type { TrainingHookCheckpoint, TrainingHooks, TrainingHookState } from './plugin.js';
import { entryToTensor, tensorToEntry, type SafetensorsEntry } from './safetensors.js';

/** How a hook's state is described in the trainer checkpoint's metadata (its tensors are entries beside the weights). */
export interface StoredHookState {
  /** The names of the hook's tensors, stored as `hook.<key>.<name>`. */
  readonly tensors: readonly string[];
  readonly json: unknown;
}

/** The states of a run's checkpointed hooks, by key. */
export type HookStates = ReadonlyMap<string, TrainingHookState>;

const KEY_PATTERN = /^[A-Za-z0-9_.-]+$/u;

/** Where a hook's tensor is stored in the checkpoint file (never colliding with `param.` and optimizer keys). */
export function hookTensorKey(key: string, name: string): string {
  return `hook.${key}.${name}`;
}

/**
 * The hooks that contribute checkpoint state.
 * @throws {TrainingError} when a key is not a valid name or two hooks share one.
 */
export function checkpointedHooks(hooks: readonly TrainingHooks[]): TrainingHookCheckpoint[] {
  const seen = new Set<string>();
  const checkpointed = hooks.flatMap((hook) => (hook.checkpoint ? [hook.checkpoint] : []));
  for (const { key } of checkpointed) {
    if (!KEY_PATTERN.test(key)) {
      throw new TrainingError(`[@lora/core] train: a training hook's checkpoint.key must be letters, digits, '.', '_' or '-', got ${JSON.stringify(key)}.`);
    }
    if (seen.has(key)) {
      throw new TrainingError(`[@lora/core] train: two training hooks use checkpoint.key "${key}"; give each hook its own key (e.g. plugin and adapter name).`);
    }
    seen.add(key);
  }
  return checkpointed;
}

/** Every hook's state now (new tensors: dispose with {@link disposeHookStates}). */
export function captureHookStates(hooks: readonly TrainingHookCheckpoint[]): Map<string, TrainingHookState> {
  return new Map(hooks.map((hook) => [hook.key, hook.state()] as const));
}

/** Free the tensors of captured states. */
export function disposeHookStates(states: HookStates): void {
  for (const state of states.values()) tf.dispose(Object.values(state.tensors));
}

/** Put captured states back (a rollback in memory); the states stay owned by the caller. */
export function restoreHookStates(hooks: readonly TrainingHookCheckpoint[], states: HookStates, source: string): void {
  for (const hook of hooks) {
    const state = states.get(hook.key);
    if (state) hook.restore(state, { source });
  }
}

/**
 * The checkpoint entries and metadata of the hooks' current states.
 * @throws {TrainingError} when a hook's tensor holds a non-finite value (nothing is written then).
 */
export function hookCheckpointEntries(hooks: readonly TrainingHookCheckpoint[]): {
  entries: Map<string, SafetensorsEntry>;
  stored: Record<string, StoredHookState>;
} {
  const entries = new Map<string, SafetensorsEntry>();
  const stored: Record<string, StoredHookState> = {};
  const states = captureHookStates(hooks);
  try {
    for (const [key, state] of states) {
      for (const [name, tensor] of Object.entries(state.tensors)) {
        const entry = tensorToEntry(tensor);
        const { count, first } = countNonFinite(entry);
        if (count > 0) {
          // Only finite states are checkpointed: a file with this tensor would be refused on resume.
          throw new TrainingError(
            `[@lora/core] train: training hook "${key}" gave state tensor "${name}" with ${count} non-finite value${count === 1 ? '' : 's'} (first: ${first}); the checkpoint was not written and the previous one is kept. The hook's state must be finite.`,
          );
        }
        entries.set(hookTensorKey(key, name), entry);
      }
      stored[key] = { tensors: Object.keys(state.tensors), json: state.json };
    }
  } finally {
    disposeHookStates(states);
  }
  return { entries, stored };
}

/**
 * The one-line error for checkpointed hook state that does not fit the run: names the source (file),
 * the field, what was expected and what was found, and the fix (default: start over).
 */
export function hookStateError(options: {
  readonly plugin?: string;
  readonly source: string;
  readonly field: string;
  readonly expected: string;
  readonly found: string;
  readonly fix?: string;
  readonly missing?: readonly string[];
  readonly unexpected?: readonly string[];
}): CheckpointError {
  const plugin = options.plugin ?? '@lora/core';
  const fix = options.fix ?? 'It was written by another version or for another setup; delete it to start over.';
  return new CheckpointError(`[${plugin}] Cannot resume from ${options.source}: ${options.field} should be ${options.expected}, found ${options.found}. ${fix}`, {
    plugin,
    missing: options.missing,
    unexpected: options.unexpected,
  });
}

function unfit(source: string, field: string, expected: string, found: string, details: { missing?: string[]; unexpected?: string[] } = {}): CheckpointError {
  return hookStateError({ source, field, expected, found, ...details });
}

/**
 * Validate the hooks' stored states in a checkpoint file and restore each hook from its own.
 * Runs before the weights are loaded (a hook may rebuild variables).
 * @throws {CheckpointError} when a hook's state is missing, one is stored for a hook this run does
 * not have, or a listed tensor is absent; a hook's own `restore` throws for state that does not fit it.
 */
export function restoreHooksFromFile(
  file: string,
  hooks: readonly TrainingHookCheckpoint[],
  stored: unknown,
  tensors: ReadonlyMap<string, SafetensorsEntry>,
): void {
  const field = 'metadata lora_trainer_state.hooks';
  if (stored !== undefined && (stored === null || typeof stored !== 'object' || Array.isArray(stored))) {
    throw unfit(file, field, 'an object of hook states by key', JSON.stringify(stored));
  }
  const byKey = (stored ?? {}) as Record<string, unknown>;
  const wanted = new Set(hooks.map((hook) => hook.key));
  const unexpected = Object.keys(byKey).filter((key) => !wanted.has(key));
  if (unexpected.length > 0) {
    throw unfit(file, field, `states for this run's hooks only ([${[...wanted].join(', ')}])`, `state for [${unexpected.join(', ')}]`, { unexpected });
  }
  for (const hook of hooks) {
    const entry = byKey[hook.key] as Partial<StoredHookState> | undefined;
    if (entry === undefined) {
      throw unfit(file, `${field}["${hook.key}"]`, `the state of training hook "${hook.key}"`, 'none (the run that wrote it did not save it)', { missing: [hook.key] });
    }
    if (entry === null || typeof entry !== 'object' || !Array.isArray(entry.tensors) || !entry.tensors.every((name) => typeof name === 'string')) {
      throw unfit(file, `${field}["${hook.key}"]`, '{ tensors: string[], json }', JSON.stringify(entry));
    }
    const missing = entry.tensors.filter((name) => !tensors.has(hookTensorKey(hook.key, name)));
    if (missing.length > 0) {
      throw unfit(file, `tensor "${hookTensorKey(hook.key, missing[0]!)}"`, `present (listed in ${field}["${hook.key}"])`, 'no such tensor', {
        missing: missing.map((name) => hookTensorKey(hook.key, name)),
      });
    }
    const listed = entry.tensors;
    const state: TrainingHookState = {
      // In a tidy: a tensor that fails to decode frees those made before it.
      tensors: tf.tidy(() => Object.fromEntries(listed.map((name) => [name, entryToTensor(tensors.get(hookTensorKey(hook.key, name))!, name)]))),
      json: entry.json,
    };
    try {
      hook.restore(state, { source: file });
    } finally {
      tf.dispose(Object.values(state.tensors));
    }
  }
}
