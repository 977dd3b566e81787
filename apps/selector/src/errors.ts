import { installCommand } from './package-manager.js';

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

/**
 * A recipe needs a package that is not installed. The install command is for the user's package
 * manager; a package that is not published gets no command (it would only fail).
 */
export class MissingPackageError extends CliError {
  readonly packageName: string;
  readonly installCommand: string | null;

  constructor(packageName: string, purpose: string) {
    const command = installCommand([packageName]);
    super(
      command === null
        ? `${purpose} needs ${packageName}, which is not installed and not published yet; choose another variant.`
        : `${purpose} needs ${packageName}, which is not installed. Install it with: ${command}`,
    );
    this.packageName = packageName;
    this.installCommand = command;
  }
}
