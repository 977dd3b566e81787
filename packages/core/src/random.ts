/**
 * A small seeded generator (mulberry32): uniform floats in [0, 1). The one generator behind every
 * reproducible shuffle, split, sampler and test input of the @lora packages.
 */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The seed to give tfjs's normal generators (`tf.randomNormal`): they treat seed 0 as "no seed" and
 * draw from `Math.random()`, so seed 0 would silently not be reproducible. 0 maps to a seed they honour
 * (the smallest positive double, which no integer seed equals); every other seed is unchanged.
 */
export function normalSeed(seed: number | undefined): number | undefined {
  return seed === 0 ? Number.MIN_VALUE : seed;
}
