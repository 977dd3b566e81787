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
  /** The npm package that is missing (e.g. `@lora/dora`). */
  readonly packageName: string;
  /** The command that installs it with the user's package manager, or null when it is not published. */
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

/**
 * The one-line input error for a file that could not be read: what is wrong in words (missing, a
 * directory, no permission) rather than the system's error code, and the fix.
 * @example
 * throw unreadableFile('Config file', 'selector.json', error, 'check the --config path');
 */
export function unreadableFile(what: string, file: string, error: unknown, fix: string): CliError {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  const problem =
    code === 'ENOENT' ? 'does not exist' : code === 'EISDIR' ? 'is a directory, not a file' : code === 'EACCES' || code === 'EPERM' ? 'cannot be read (permission denied)' : `cannot be read (${code ?? String(error)})`;
  return new CliError(`${what} ${file} ${problem}; ${fix}.`, { exitCode: 2, cause: error });
}
