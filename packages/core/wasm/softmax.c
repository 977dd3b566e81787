// Softmax over the last axis of scale·x + mask, and its gradient, for attention's probabilities
// on tfjs's WASM backend (128-bit SIMD):
//   y  = softmax(scale·x + m)              m: row (row mod mask_rows) of an additive mask, or none
//   dx = scale·y·(dy − Σ dy·y)
// The composite form is a multiply, an add, the softmax and four kernels for its gradient, each a
// pass over the [batch, heads, queries, keys] scores.
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

#include "simd-exp.h"
#include "simd-lanes.h"

// Far below any score, finite: padding lanes of the last partial vector, which exp turns into 0.
#define PAD -3.0e38f

__attribute__((export_name("scaled_softmax"))) void scaled_softmax(int rows, int n, const float *x, float scale, const float *mask, int mask_rows, float *y) {
  const v128_t vs = wasm_f32x4_splat(scale);
  const int full = n & ~3, tail = n - full;
  for (int row = 0; row < rows; row++, x += n, y += n) {
    const float *m = mask == 0 ? 0 : mask + (row % mask_rows) * n;
    // z = scale·x + m into y, and its maximum.
    v128_t vmax = wasm_f32x4_splat(PAD);
    for (int j = 0; j < full; j += 4) {
      v128_t z = wasm_f32x4_mul(wasm_v128_load(x + j), vs);
      if (m != 0) z = wasm_f32x4_add(z, wasm_v128_load(m + j));
      wasm_v128_store(y + j, z);
      vmax = wasm_f32x4_pmax(vmax, z);
    }
    if (tail > 0) {
      v128_t z = wasm_f32x4_mul(load_tail(x + full, tail, 0.0f), vs);
      if (m != 0) z = wasm_f32x4_add(z, load_tail(m + full, tail, 0.0f));
      // Padding lanes must not raise the maximum.
      z = wasm_v128_bitselect(z, wasm_f32x4_splat(PAD), wasm_i32x4_lt(wasm_i32x4_make(0, 1, 2, 3), wasm_i32x4_splat(tail)));
      store_tail(y + full, z, tail);
      vmax = wasm_f32x4_pmax(vmax, z);
    }
    // The maximum across lanes, left in every lane.
    vmax = wasm_f32x4_pmax(vmax, wasm_i32x4_shuffle(vmax, vmax, 2, 3, 0, 1));
    const v128_t vtop = wasm_f32x4_pmax(vmax, wasm_i32x4_shuffle(vmax, vmax, 1, 0, 3, 2));
    // e = exp(z − max) and its sum.
    v128_t vsum = wasm_f32x4_splat(0.0f);
    for (int j = 0; j < full; j += 4) {
      const v128_t e = exp_nonpositive(wasm_f32x4_sub(wasm_v128_load(y + j), vtop));
      wasm_v128_store(y + j, e);
      vsum = wasm_f32x4_add(vsum, e);
    }
    if (tail > 0) {
      const v128_t e = exp_nonpositive(wasm_f32x4_sub(load_tail(y + full, tail, PAD), vtop));
      store_tail(y + full, e, tail);
      vsum = wasm_f32x4_add(vsum, e);
    }
    const v128_t reciprocal = wasm_f32x4_splat(1.0f / sum_lanes(vsum));
    for (int j = 0; j < full; j += 4) wasm_v128_store(y + j, wasm_f32x4_mul(wasm_v128_load(y + j), reciprocal));
    if (tail > 0) store_tail(y + full, wasm_f32x4_mul(load_tail(y + full, tail, 0.0f), reciprocal), tail);
  }
}

__attribute__((export_name("scaled_softmax_grad"))) void scaled_softmax_grad(int rows, int n, const float *dy, const float *y, float scale, float *dx) {
  const int full = n & ~3, tail = n - full;
  for (int row = 0; row < rows; row++, dy += n, y += n, dx += n) {
    v128_t vdot = wasm_f32x4_splat(0.0f);
    for (int j = 0; j < full; j += 4) vdot = wasm_f32x4_add(vdot, wasm_f32x4_mul(wasm_v128_load(dy + j), wasm_v128_load(y + j)));
    if (tail > 0) vdot = wasm_f32x4_add(vdot, wasm_f32x4_mul(load_tail(dy + full, tail, 0.0f), load_tail(y + full, tail, 0.0f)));
    const v128_t dot = wasm_f32x4_splat(sum_lanes(vdot)), vs = wasm_f32x4_splat(scale);
    for (int j = 0; j < full; j += 4) {
      const v128_t g = wasm_f32x4_mul(wasm_f32x4_mul(wasm_v128_load(y + j), wasm_f32x4_sub(wasm_v128_load(dy + j), dot)), vs);
      wasm_v128_store(dx + j, g);
    }
    if (tail > 0) {
      const v128_t g = wasm_f32x4_mul(wasm_f32x4_mul(load_tail(y + full, tail, 0.0f), wasm_f32x4_sub(load_tail(dy + full, tail, 0.0f), dot)), vs);
      store_tail(dx + full, g, tail);
    }
  }
}
