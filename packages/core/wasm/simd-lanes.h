// Partial vectors for the last size % 4 values of a row, lane by lane (no stack: the vector stays
// in a v128 local). Shared by core's fused kernels.
#ifndef LORA_SIMD_LANES_H
#define LORA_SIMD_LANES_H
#include <wasm_simd128.h>

// The first `lanes` (< 4) values at p, the other lanes set to `pad`.
static inline v128_t load_tail(const float *p, int lanes, float pad) {
  v128_t v = wasm_f32x4_splat(pad);
  if (lanes > 0) v = wasm_f32x4_replace_lane(v, 0, p[0]);
  if (lanes > 1) v = wasm_f32x4_replace_lane(v, 1, p[1]);
  if (lanes > 2) v = wasm_f32x4_replace_lane(v, 2, p[2]);
  return v;
}

// Store the first `lanes` (< 4) lanes of v at p.
static inline void store_tail(float *p, v128_t v, int lanes) {
  if (lanes > 0) p[0] = wasm_f32x4_extract_lane(v, 0);
  if (lanes > 1) p[1] = wasm_f32x4_extract_lane(v, 1);
  if (lanes > 2) p[2] = wasm_f32x4_extract_lane(v, 2);
}

static inline float sum_lanes(v128_t v) {
  return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) + wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3);
}

#endif
