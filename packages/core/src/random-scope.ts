/**
 * Seeds for random draws inside a scope: with a scope open, every call of {@link nextScopedSeed}
 * returns the next number of a sequence fixed by the scope's seed, so a computation re-run with the
 * same seed (a training step after a resume) draws the same masks. Outside a scope it returns
 * undefined and tfjs draws unseeded, as before.
 */
let scope: { readonly seed: number; counter: number } | null = null;

/**
 * SplitMix32-style mixing (murmur3's 32-bit finalizer of `seed ^ (counter + 1)·0x9e3779b9`):
 * consecutive counters give unrelated values. Also the counter-based hash behind dropout's mask
 * (wasm/dropout.c computes the same function).
 */
export function hashCounter(seed: number, counter: number): number {
  let x = (seed ^ Math.imul(counter + 1, 0x9e3779b9)) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b) >>> 0;
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** Derive a 32-bit seed from a base seed and integers (e.g. step and micro-batch). */
export function deriveSeed(seed: number, ...parts: readonly number[]): number {
  let value = seed >>> 0;
  for (const part of parts) value = hashCounter(value, part);
  return value;
}

/** Run `fn` (synchronously) with seeded random draws; scopes nest. */
export function withSeededRandom<T>(seed: number, fn: () => T): T {
  const previous = scope;
  scope = { seed, counter: 0 };
  try {
    return fn();
  } finally {
    scope = previous;
  }
}

/** The next seed of the open scope, or undefined outside one. */
export function nextScopedSeed(): number | undefined {
  if (scope === null) return undefined;
  return hashCounter(scope.seed, scope.counter++);
}
