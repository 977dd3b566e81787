import { installCommandFor } from './install-command.js';

/** An error the CLI reports as one line and a non-zero exit, without a stack trace. */
export class CliError extends Error {
  /** Process exit code: 2 for usage errors, 1 for everything else. */
  readonly exitCode: number;

  constructor(message: string, options: { exitCode?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CliError';
    this.exitCode = options.exitCode ?? 1;
  }
}

/** A recipe needs a package that is not installed. */
export class MissingPackageError extends CliError {
  readonly packageName: string;
  readonly installCommand: string;

  constructor(packageName: string, purpose: string) {
    const installCommand = installCommandFor([packageName]);
    super(`${purpose} needs ${packageName}, which is not installed. Install it with: ${installCommand}`);
    this.packageName = packageName;
    this.installCommand = installCommand;
  }
}
