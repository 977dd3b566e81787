// A LoRA layer's output at inference, in one call: out = base + s·(x·Aᵀ)·Bᵀ for x [rows, in],
// A [rank, in], B [out, rank], base [rows, out] (the base layer's output), 128-bit SIMD. Generating
// one token at a time, the unmerged adapter's products are tiny and its four kernels (two products,
// the scaling, the add) cost more in dispatch than in arithmetic.
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

#include "simd-lanes.h"

static inline float dot(const float *u, const float *v, int n) {
  v128_t acc = wasm_f32x4_splat(0.0f);
  int k = 0;
  for (; k + 4 <= n; k += 4) acc = wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_v128_load(u + k), wasm_v128_load(v + k)));
  float total = sum_lanes(acc);
  for (; k < n; k++) total += u[k] * v[k];
  return total;
}

// `t` is `rank` floats of scratch.
__attribute__((export_name("low_rank_add"))) void low_rank_add(int rows, int in, int rank, int out_features, const float *x, const float *a, const float *b,
                                                                const float *base, float scaling, float *t, float *out) {
  for (int m = 0; m < rows; m++, x += in, base += out_features, out += out_features) {
    for (int r = 0; r < rank; r++) t[r] = dot(x, a + r * in, in) * scaling;
    for (int j = 0; j < out_features; j++) out[j] = base[j] + dot(t, b + j * rank, rank);
  }
}
