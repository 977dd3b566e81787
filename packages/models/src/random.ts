import { seededRandom } from '@lora/core/internal';

export { seededRandom };

/** A shuffled copy of `items` (Fisher–Yates with {@link seededRandom}). */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  const random = seededRandom(seed);
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}
