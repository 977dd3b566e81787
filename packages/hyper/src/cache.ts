import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '@lora/core';
import type { GeneratedFactors } from './generator.js';

/**
 * Check an inference-cache budget (`hyper({ cacheBytes })`): a whole number of bytes >= 0.
 * Anything else (a string like '64MB', a negative or fractional number) would otherwise compare as
 * "does not fit" and turn the cache off silently.
 * @throws {ConfigError} naming `field`.
 */
export function checkCacheBytes(value: unknown, field = 'cacheBytes'): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return value;
  throw new ConfigError({
    plugin: 'hyper',
    field,
    received: value,
    expected: 'a whole number of bytes >= 0 (0 turns the inference cache off)',
    hint: 'Pass e.g. hyper({ cacheBytes: 64 * 1024 * 1024 }) for 64 MiB.',
  });
}

/** Counters of a {@link GeneratedAdapterCache}. */
export interface CacheStats {
  /** `get` calls that found their key, since creation. */
  readonly hits: number;
  /** `get` calls that found nothing (the adapters were generated), since creation. */
  readonly misses: number;
  /** Least recently used entries dropped to make room within the budget, since creation. */
  readonly evictions: number;
  /** Times the whole cache was dropped (optimizer step, weight load). */
  readonly invalidations: number;
  /** Conditions cached now (one entry holds every target's A and B for one condition). */
  readonly entries: number;
  /** Bytes of cached factors now (float32: 4 per element of every A and B). */
  readonly bytes: number;
  /** The most bytes the cache keeps (0: caching disabled). */
  readonly budgetBytes: number;
}

interface Entry {
  readonly factors: readonly GeneratedFactors[];
  readonly bytes: number;
}

/**
 * An LRU cache of generated adapters for inference, keyed by the canonical condition key, within
 * a byte budget. Cached tensors are kept (outside any tidy) and owned by the cache: they are
 * disposed on eviction, on {@link GeneratedAdapterCache.invalidate} (any optimizer step or weight
 * load) and on dispose. Callers must not dispose what `get` returns.
 */
export class GeneratedAdapterCache {
  /** The most bytes of generated factors kept (float32, 4 per element); 0 disables caching. Fixed at creation. */
  readonly budgetBytes: number;
  private readonly entries = new Map<string, Entry>();
  private bytes = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;
  private invalidations = 0;

  /**
   * @param budgetBytes the most bytes of tensors kept (0 disables caching).
   * @throws {ConfigError} unless `budgetBytes` is a whole number >= 0.
   */
  constructor(budgetBytes: number) {
    this.budgetBytes = checkCacheBytes(budgetBytes);
  }

  /** The cached factors for a key (most recently used afterwards), or undefined. */
  get(key: string): readonly GeneratedFactors[] | undefined {
    const entry = this.entries.get(key);
    if (!entry) {
      this.misses += 1;
      return undefined;
    }
    this.hits += 1;
    this.entries.delete(key);
    this.entries.set(key, entry);
    return entry.factors;
  }

  /**
   * Keep `factors` under `key`, evicting least recently used entries to stay within the budget.
   * Entries under `pinned` keys (in use by the current forward pass) are never evicted. Returns
   * false (and keeps nothing) when the entry does not fit; the caller still owns the tensors then.
   */
  put(key: string, factors: readonly GeneratedFactors[], pinned: ReadonlySet<string> = new Set()): boolean {
    const bytes = factors.reduce((sum, { a, b }) => sum + (a.size + b.size) * 4, 0);
    this.remove(key);
    let evictable = this.bytes;
    for (const [other, entry] of this.entries) if (pinned.has(other)) evictable -= entry.bytes;
    if (bytes > this.budgetBytes - (this.bytes - evictable)) return false;
    while (this.bytes + bytes > this.budgetBytes) {
      const oldest = [...this.entries.keys()].find((other) => !pinned.has(other))!;
      this.remove(oldest);
      this.evictions += 1;
    }
    for (const { a, b } of factors) {
      tf.keep(a);
      tf.keep(b);
    }
    this.entries.set(key, { factors, bytes });
    this.bytes += bytes;
    return true;
  }

  /** Whether `tensor` is owned by this cache. */
  owns(tensor: tf.Tensor): boolean {
    for (const entry of this.entries.values()) if (entry.factors.some(({ a, b }) => a === tensor || b === tensor)) return true;
    return false;
  }

  /** Drop every entry (the generator's weights changed). */
  invalidate(): void {
    if (this.entries.size > 0) this.invalidations += 1;
    for (const key of [...this.entries.keys()]) this.remove(key);
  }

  /** Counters since creation (hits, misses, evictions, invalidations) and the current entries and bytes against the budget. */
  stats(): CacheStats {
    return {
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
      invalidations: this.invalidations,
      entries: this.entries.size,
      bytes: this.bytes,
      budgetBytes: this.budgetBytes,
    };
  }

  private remove(key: string): void {
    const entry = this.entries.get(key);
    if (!entry) return;
    for (const { a, b } of entry.factors) tf.dispose([a, b]);
    this.entries.delete(key);
    this.bytes -= entry.bytes;
  }

  /** Free every cached factor. */
  dispose(): void {
    this.invalidate();
  }
}
