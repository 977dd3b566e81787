import { BackendUnavailableError } from './errors.js';
import { formatBackendFailure, formatBackendReport } from './format-report.js';
import { useBestBackend, type BackendReport, type UseBestBackendOptions } from './use-best-backend.js';

/** Options for {@link doctor}. */
export interface DoctorOptions extends UseBestBackendOptions {
  /** Where the text goes (default `console.log`). */
  readonly write?: (text: string) => void;
}

/**
 * `lora doctor`: select the backend as {@link useBestBackend} does, print what was chosen and why
 * every faster one was skipped, and return the report. When nothing starts it prints every reason
 * and rethrows.
 *
 * @throws {BackendUnavailableError} when no backend starts (after printing why).
 * @example
 * import { doctor } from '@lora/cuda-backend';
 * await doctor(); // prints the report; `await doctor({ write: (t) => process.stderr.write(t + '\n') })`
 */
export async function doctor(options: DoctorOptions = {}): Promise<BackendReport> {
  const write = options.write ?? ((text: string) => console.log(text));
  try {
    const report = await useBestBackend(options);
    write(formatBackendReport(report));
    return report;
  } catch (error) {
    if (error instanceof BackendUnavailableError) write(formatBackendFailure(error));
    throw error;
  }
}
