// Reductions the trainer and the gradients run on every gradient and parameter each step, for tfjs's
// WASM backend (128-bit SIMD): Σ x² (the gradient norm for clipping) and whether every value is
// finite (finite or nothing). The composite forms take two or three kernels per tensor, and tfjs's
// small elementwise kernels each wake the thread pool: ~0.2 ms for a LoRA factor of 2,048 values.
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

#include "simd-lanes.h"

__attribute__((export_name("sum_of_squares"))) float sum_of_squares(int size, const float *x) {
  v128_t a0 = wasm_f32x4_splat(0.0f), a1 = a0;
  int i = 0;
  for (; i + 8 <= size; i += 8) {
    const v128_t v0 = wasm_v128_load(x + i), v1 = wasm_v128_load(x + i + 4);
    a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(v0, v0));
    a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(v1, v1));
  }
  float total = sum_lanes(wasm_f32x4_add(a0, a1));
  for (; i < size; i++) total += x[i] * x[i];
  return total;
}

// 1 when no value is NaN or ±Infinity: x − x is 0 for a finite x and NaN otherwise.
__attribute__((export_name("all_finite"))) int all_finite(int size, const float *x) {
  v128_t ok = wasm_i32x4_splat(-1);
  int i = 0;
  for (; i + 4 <= size; i += 4) {
    const v128_t v = wasm_v128_load(x + i);
    ok = wasm_v128_and(ok, wasm_f32x4_eq(wasm_f32x4_sub(v, v), wasm_f32x4_splat(0.0f)));
  }
  int finite = wasm_i32x4_all_true(ok);
  for (; i < size; i++) finite &= (x[i] - x[i]) == 0.0f;
  return finite;
}

// Σ over the rows of a [rows, cols] matrix, dst[j] = Σ_i src[i·cols + j]: a bias's gradient (the
// sum of dy over every leading axis). tfjs-backend-wasm's Sum first transposes the reduced axes
// last, one value at a time; here each row is added to the accumulating row in place.
__attribute__((export_name("sum_rows"))) void sum_rows(int rows, int cols, const float *src, float *dst) {
  for (int j = 0; j < cols; j++) dst[j] = 0.0f;
  for (int i = 0; i < rows; i++, src += cols) {
    int j = 0;
    for (; j + 4 <= cols; j += 4) wasm_v128_store(dst + j, wasm_f32x4_add(wasm_v128_load(dst + j), wasm_v128_load(src + j)));
    for (; j < cols; j++) dst[j] += src[j];
  }
}
