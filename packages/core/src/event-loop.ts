/**
 * Let other tasks (progress output, signals, a browser's rendering and input) run, then resume.
 * Node's `setImmediate` where it exists; in a browser a `MessageChannel` message, which, unlike
 * `setTimeout(fn, 0)`, is not clamped to 4 ms once nested (that would add 4 ms to every step).
 */
export function yieldToEventLoop(): Promise<void> {
  const scope = globalThis as { setImmediate?: (callback: () => void) => unknown };
  if (typeof scope.setImmediate === 'function') {
    const setImmediate = scope.setImmediate;
    return new Promise((resolve) => void setImmediate(resolve));
  }
  if (typeof MessageChannel === 'function') {
    return new Promise((resolve) => {
      const channel = new MessageChannel();
      // addEventListener on a MessagePort does not start it; the onmessage setter does (Node's types lack it).
      (channel.port1 as unknown as { onmessage: () => void }).onmessage = () => {
        channel.port1.close();
        resolve();
      };
      channel.port2.postMessage(null);
    });
  }
  return new Promise((resolve) => setTimeout(resolve, 0));
}
