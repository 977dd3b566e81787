import { LoraError } from '@lora/core';
import type { BackendAttempt, BackendKind } from './backend-kinds.js';

const PLUGIN = '@lora/cuda-backend';

/**
 * One backend could not start. Caught by {@link useBestBackend}, which records it as the reason the
 * backend was skipped and tries the next one; thrown to the caller only by the low-level starters.
 */
export class BackendInitError extends LoraError {
  /** The backend that failed. */
  readonly kind: BackendKind;

  constructor(options: { kind: BackendKind; message: string; cause?: unknown }) {
    super(options.message, { plugin: PLUGIN, cause: options.cause });
    this.kind = options.kind;
  }
}

/**
 * No acceptable backend could start: every candidate was skipped (or the preferred ones were, with
 * `fallback: false`). `attempts` says why each one was.
 */
export class BackendUnavailableError extends LoraError {
  /** Every backend tried, in order, with why it was not used. */
  readonly attempts: readonly BackendAttempt[];

  constructor(message: string, attempts: readonly BackendAttempt[]) {
    super(message, { plugin: PLUGIN });
    this.attempts = attempts;
  }
}
