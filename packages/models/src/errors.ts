import { LoraError } from '@lora/core';
import { PACKAGE } from './config-fields.js';

/**
 * A data file or corpus could not be read: a malformed JSONL line, a CSV row with the wrong number of
 * fields, a missing column, or a corpus package that is not installed. `file` and `line` (1-based)
 * locate the problem; `field` names a missing column or key.
 */
export class DatasetError extends LoraError {
  /** The file path or `source` name being read (`<jsonl>`/`<csv>` for text without one), or the corpus package's name. */
  readonly file: string;
  /** 1-based line (JSONL) or record (CSV) number, or null when the problem is not on one line. */
  readonly line: number | null;
  /** The column or key concerned, or null. */
  readonly field: string | null;

  constructor(message: string, options: { file: string; line?: number | null; field?: string | null; cause?: unknown }) {
    super(message, { plugin: PACKAGE, cause: options.cause });
    this.file = options.file;
    this.line = options.line ?? null;
    this.field = options.field ?? null;
  }
}

/** A tokenizer file is missing, malformed or of a kind that cannot be loaded. */
export class TokenizerError extends LoraError {
  /** The file concerned. */
  readonly file: string;

  constructor(message: string, options: { file: string; cause?: unknown }) {
    super(message, { plugin: PACKAGE, cause: options.cause });
    this.file = options.file;
  }
}
