import { hookStateError } from '@lora/core/internal';
import { z } from 'zod';
import type { AdaLoraConfig } from './adalora-config.js';

/** The schedule settings a checkpoint was written with; a resumed run must use the same. */
const SCHEDULE_FIELDS = ['initR', 'targetR', 'tinit', 'tfinal', 'totalStep', 'deltaT', 'beta1', 'beta2', 'growth'] as const;

const flags = z.array(z.boolean());

const historyEntrySchema = z
  .object({
    step: z.number().int(),
    phase: z.enum(['warmup', 'budgeting', 'final', 'fixed']),
    budget: z.number().int(),
    masked: z.boolean(),
    grown: z.record(z.number().int()),
    ranks: z.record(z.number().int()),
    total: z.number().int(),
  })
  .strict();

const moduleSchema = z
  .object({
    path: z.string(),
    rows: z.number().int().nonnegative(),
    live: flags,
    keep: flags.nullable(),
    protectedUntil: z.array(z.number().int()).nullable(),
    importance: z.boolean(),
  })
  .strict();

const checkpointSchema = z
  .object({
    version: z.literal(1),
    schedule: z.record(z.unknown()),
    modules: z.array(moduleSchema),
    growthEvents: z.number().int().nonnegative(),
    lastPattern: z.record(flags).nullable(),
    finalPattern: z.record(flags).nullable(),
    history: z.array(historyEntrySchema),
  })
  .strict();

/** What a {@link RankAllocator} checkpoints besides its importance tensors (JSON). */
export type AllocatorCheckpointJson = z.infer<typeof checkpointSchema>;

/** The schedule settings of a config, as a checkpoint stores them. */
export function scheduleOf(config: AdaLoraConfig): Record<string, unknown> {
  return Object.fromEntries(SCHEDULE_FIELDS.map((field) => [field, config[field]]));
}

/** Where the allocator's smoothed importance of one factor is stored among the hook's tensors. */
export function importanceTensorName(path: string, factor: string, kind: 'sensitivity' | 'uncertainty'): string {
  return `${path}.${factor}.${kind}`;
}

/** A short JSON rendering for messages. */
function shown(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/**
 * Check a checkpointed allocator state against the adapter it is restored into.
 * @param modules the adapter's modules: path and rows held, in model order.
 * @throws {CheckpointError} one line naming `source`, the field, what was expected and found, and the fix.
 */
export function parseAllocatorCheckpoint(
  json: unknown,
  options: { readonly source: string; readonly field: string; readonly config: AdaLoraConfig; readonly modules: readonly (readonly [string, number])[] },
): AllocatorCheckpointJson {
  const fail = (field: string, expected: string, found: string, fix?: string) =>
    hookStateError({ plugin: 'adalora', source: options.source, field: `${options.field}.${field}`, expected, found, fix });
  const parsed = checkpointSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const at = issue.path.join('.');
    const found = issue.path.reduce<unknown>((value, key) => (value as Record<string | number, unknown> | undefined)?.[key], json);
    throw fail(at || '(root)', issue.message.replace(/^Expected /u, '').replace(/, received .*$/u, ''), shown(found));
  }
  const state = parsed.data;
  const sameSetup = 'Resume with the adapter config and model the run started with, or delete the checkpoint to start over.';
  const schedule = scheduleOf(options.config);
  for (const field of SCHEDULE_FIELDS) {
    if (JSON.stringify(state.schedule[field] ?? null) !== JSON.stringify(schedule[field] ?? null)) {
      throw fail(`schedule.${field}`, `${shown(schedule[field])} (this adapter's config)`, shown(state.schedule[field]), sameSetup);
    }
  }
  const paths = options.modules.map(([path]) => path);
  const stored = state.modules.map((module) => module.path);
  if (JSON.stringify(stored) !== JSON.stringify(paths)) {
    throw fail('modules', `the adapter's modules [${paths.join(', ')}]`, `[${stored.join(', ')}]`, sameSetup);
  }
  state.modules.forEach((module, index) => {
    const rows = options.modules[index]![1];
    if (module.rows !== rows) throw fail(`modules[${index}].rows`, `${rows} (rows ${module.path} holds)`, String(module.rows), sameSetup);
    for (const key of ['live', 'keep', 'protectedUntil'] as const) {
      const length = module[key]?.length ?? rows;
      if (length !== rows) throw fail(`modules[${index}].${key}`, `${rows} entries`, `${length}`);
    }
  });
  return state;
}
