import { BACKEND_ORDER, type BackendKind } from './backend-kinds.js';
import { BackendUnavailableError } from './errors.js';

/** Whether `value` is one of the kinds in `order`. */
export function isBackendKind(value: unknown, order: readonly BackendKind[] = BACKEND_ORDER): value is BackendKind {
  return typeof value === 'string' && (order as readonly string[]).includes(value);
}

/**
 * The order to try backends in, from `prefer` and `fallback`, out of `order` (default Node's,
 * {@link BACKEND_ORDER}; a browser uses `BROWSER_BACKEND_ORDER`).
 * @throws {BackendUnavailableError} when `prefer` names a kind not in `order`.
 */
export function backendOrder(
  prefer: BackendKind | readonly BackendKind[] | undefined,
  fallback = true,
  order: readonly BackendKind[] = BACKEND_ORDER,
): BackendKind[] {
  const preferred = prefer === undefined ? [] : typeof prefer === 'string' ? [prefer] : [...prefer];
  for (const kind of preferred) {
    if (!isBackendKind(kind, order)) {
      throw new BackendUnavailableError(
        `[@lora/cuda-backend] Unknown backend "${String(kind)}" in prefer. Known: ${order.join(', ')}. Pass e.g. { prefer: '${order[0]}' }.`,
        [],
      );
    }
  }
  const unique = [...new Set(preferred)];
  if (unique.length === 0) return [...order];
  return fallback ? [...unique, ...order.filter((kind) => !unique.includes(kind))] : unique;
}
