/**
 * The code tables of bitsandbytes, as constants and exact generators.
 *
 * Every value is a float32; tables are `Float32Array`s shared by all layers (never mutate them).
 */

/** The 4-bit data types this package implements. */
export type QuantType = 'nf4' | 'fp4';

/**
 * NF4 (4-bit NormalFloat, QLoRA §3): code `k` (0…15) stands for `NF4_CODE[k] · absmax`. Sorted, with
 * an exact 0 at code 7. These are the literals of bitsandbytes' `get_4bit_type('nf4')`; each is exactly
 * representable in float32.
 */
export const NF4_CODE: Float32Array = Float32Array.from([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]);

/**
 * NF4 decision thresholds: the float32 midpoints between neighbouring codes, equal to the literals
 * of bitsandbytes' CUDA `dQuantizeNF4`. `code(x)` = number of thresholds `t` with `x > t`, so a value
 * exactly on a threshold goes to the lower code.
 */
export const NF4_THRESHOLDS: Float32Array = (() => {
  const thresholds = new Float32Array(15);
  for (let k = 0; k < 15; k++) thresholds[k] = Math.fround((NF4_CODE[k]! + NF4_CODE[k + 1]!) / 2);
  return thresholds;
})();

/**
 * bitsandbytes' FP4 (its own e2m1 variant; not OCP E2M1, whose smallest subnormal differs), in
 * bit-pattern order: bit 3 is the sign, magnitudes by the low 3 bits are
 * 0, 1/192, 2/3, 1, 1/3, 1/2, 1/6, 1/4 (raw 0, 0.0625, 8, 12, 4, 6, 2, 3 divided by 12 in float32).
 * Code 8 is −0.
 */
export const FP4_CODE: Float32Array = Float32Array.from(
  [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6, -2, -3].map((raw) => Math.fround(raw / 12)),
);

// The magnitude pivots of bitsandbytes' `dQuantizeFP4` (float literals, compared with `>`).
const FP4_PIVOTS = [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333].map(Math.fround);
// Magnitude rank 0…7 (by value) → the 3 low bits of the code.
const FP4_RANK_TO_BITS = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011];

/** The 16-entry table of a 4-bit type (shared constant; do not mutate). */
export function codebookFor(type: QuantType): Float32Array {
  return type === 'nf4' ? NF4_CODE : FP4_CODE;
}

/** Largest |x − dequant(quant(x))| for x in [−1, 1], as a fraction of the block absmax: half the widest gap. */
export function maxHalfGap(type: QuantType): number {
  const sorted = [...codebookFor(type)].sort((a, b) => a - b);
  let widest = 0;
  for (let k = 1; k < sorted.length; k++) widest = Math.max(widest, sorted[k]! - sorted[k - 1]!);
  return widest / 2;
}

/**
 * The NF4 code of a value already scaled into [−1, 1] (bitsandbytes' `dQuantizeNF4` decision tree:
 * strict `>` against the thresholds, ties to the lower code). NaN gives code 0, as the CUDA kernel.
 */
export function nf4CodeOf(scaled: number): number {
  // Unrolled binary search over NF4_THRESHOLDS; equivalent to counting thresholds below `scaled`.
  const t = NF4_THRESHOLDS;
  if (scaled > t[7]!) {
    if (scaled > t[11]!) {
      if (scaled > t[13]!) return scaled > t[14]! ? 15 : 14;
      return scaled > t[12]! ? 13 : 12;
    }
    if (scaled > t[9]!) return scaled > t[10]! ? 11 : 10;
    return scaled > t[8]! ? 9 : 8;
  }
  if (scaled > t[3]!) {
    if (scaled > t[5]!) return scaled > t[6]! ? 7 : 6;
    return scaled > t[4]! ? 5 : 4;
  }
  if (scaled > t[1]!) return scaled > t[2]! ? 3 : 2;
  return scaled > t[0]! ? 1 : 0;
}

/** The FP4 code of a value scaled into [−1, 1] (bitsandbytes' `dQuantizeFP4`: sign bit, then magnitude pivots). */
export function fp4CodeOf(scaled: number): number {
  const sign = scaled < 0 ? 0b1000 : 0;
  const magnitude = Math.abs(scaled);
  let rank = 0;
  while (rank < 7 && magnitude > FP4_PIVOTS[rank]!) rank++;
  return sign | FP4_RANK_TO_BITS[rank]!;
}

// torch 1.13's CPU `linspace` for float32 on an AVX2 build, which produced the dynamic map stored in
// real checkpoints: the first 16·⌊n/16⌋ points come from 8-wide vectors whose base is computed with a
// fused multiply-add and whose lanes add k·step rounded; the rest from the scalar formula (fused too).
// Verified bit for bit against the map in fixtures/reference/nf4 (a plain formula differs in 44 entries).
function torchLinspace(start: number, end: number, steps: number): number[] {
  const f = Math.fround;
  const a = f(start);
  const b = f(end);
  const step = f(f(b - a) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  // In double, step·i is exact and the sum needs one rounding: this is the fused multiply-add.
  const fused = (i: number): number => (i < halfway ? f(a + step * i) : f(b - step * (steps - i - 1)));
  const out = new Array<number>(steps);
  const vectorized = Math.floor(steps / 16) * 16;
  let index = 0;
  for (; index < vectorized; index += 8) {
    const base = fused(index);
    for (let lane = 0; lane < 8; lane++) out[index + lane] = f(base + f(lane * step));
  }
  for (; index < steps; index++) out[index] = fused(index);
  return out;
}

/**
 * bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`: the 256-entry
 * 8-bit dynamic tree map, sorted. Signed (double quantization, Adam's first moment): index 0 =
 * −0.99296874, index 127 = 0, index 255 = 1. Unsigned (Adam's second moment): index 0 = 0.
 * Reproduces the map stored in bitsandbytes checkpoints bit for bit.
 */
export function createDynamicMap(signed: boolean): Float32Array {
  const f = Math.fround;
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const items = signed ? 2 ** i + 1 : 2 ** (i + 1) + 1;
    const boundaries = torchLinspace(0.1, 1, items);
    const scale = f(10 ** (i - 6));
    for (let j = 0; j < items - 1; j++) {
      const mean = f(f(boundaries[j]! + boundaries[j + 1]!) / 2);
      data.push(f(scale * mean));
      if (signed) data.push(f(-scale * mean));
    }
  }
  data.push(0, 1);
  data.sort((x, y) => x - y);
  return Float32Array.from(data);
}

/** The signed dynamic map (shared constant; do not mutate). */
export const DYNAMIC_MAP_SIGNED: Float32Array = createDynamicMap(true);
/** The unsigned dynamic map (shared constant; do not mutate). */
export const DYNAMIC_MAP_UNSIGNED: Float32Array = createDynamicMap(false);

/**
 * Index of the nearest entry of a sorted 256-entry map: a literal port of bitsandbytes' CUDA
 * `dQuantize` (7-step binary search from index 127, then the nearer neighbour by float32 midpoint).
 */
export function dynamicCodeOf(code: Float32Array, x: number): number {
  let pivot = 127;
  let upperPivot = 255;
  let lowerPivot = 0;
  let lower = -1;
  let upper = 1;
  let value = code[pivot]!;
  for (let i = 64; i > 0; i >>= 1) {
    if (x > value) {
      lowerPivot = pivot;
      lower = value;
      pivot += i;
    } else {
      upperPivot = pivot;
      upper = value;
      pivot -= i;
    }
    value = code[pivot]!;
  }
  if (upperPivot === 255) upper = code[upperPivot]!;
  if (lowerPivot === 0) lower = code[lowerPivot]!;
  if (x > value) {
    const midpoint = Math.fround((upper + value) * 0.5);
    return x > midpoint ? upperPivot : pivot;
  }
  const midpoint = Math.fround((lower + value) * 0.5);
  return x < midpoint ? lowerPivot : pivot;
}
