// LayerNorm and RMSNorm over the last axis for tfjs's WASM backend, one kernel each for the value,
// the input gradient and the weight gradient, 128-bit SIMD. With x̂ = (x − μ)·r, r = 1/√(σ² + eps):
//   y  = x̂·w + b
//   dx = r·(g − mean(g) − x̂·mean(g·x̂)),  g = dy·w
//   dw = Σ_rows dy·x̂                      (db = Σ_rows dy is a plain sum, left to tfjs)
// RMSNorm (Llama's) is the same without centring and without a bias: μ = 0, σ² = mean(x²), and dx
// loses its mean(g) term (the mean's own gradient). The composite forms run about ten kernels
// forward and backward per norm, each a pass over the activations. Row statistics are recomputed
// from x in the gradients (two cheap passes over a row that is in cache) instead of being kept
// from the forward pass.
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

#include "simd-lanes.h"

typedef struct {
  float mean;
  float reciprocal;
} row_stats;

// Mean and 1/√(variance + eps) of one row (variance of the centred values, as tf.moments); with
// `centred` 0 (RMSNorm, the callers' constant), mean 0 and 1/√(mean(x²) + eps).
static inline __attribute__((always_inline)) row_stats stats_of(const float *x, int d, float eps, const int centred) {
  v128_t acc = wasm_f32x4_splat(0.0f);
  int j = 0;
  float mean = 0.0f;
  if (centred) {
    for (; j + 4 <= d; j += 4) acc = wasm_f32x4_add(acc, wasm_v128_load(x + j));
    float total = sum_lanes(acc);
    for (; j < d; j++) total += x[j];
    mean = total / (float)d;
  }
  const v128_t vm = wasm_f32x4_splat(mean);
  acc = wasm_f32x4_splat(0.0f);
  j = 0;
  for (; j + 4 <= d; j += 4) {
    const v128_t c = wasm_f32x4_sub(wasm_v128_load(x + j), vm);
    acc = wasm_f32x4_add(acc, wasm_f32x4_mul(c, c));
  }
  float squares = sum_lanes(acc);
  for (; j < d; j++) squares += (x[j] - mean) * (x[j] - mean);
  const row_stats s = {mean, 1.0f / __builtin_sqrtf(squares / (float)d + eps)};
  return s;
}

// The value of either norm: LayerNorm's with `centred` 1 (b its bias), RMSNorm's with 0 (b unused).
// The flag is tested in the loops (a branch taken the same way throughout) rather than compiled
// into two copies of each function: the module is shipped inside the package, twice (ESM and CJS).
__attribute__((noinline)) static void norm_rows(int rows, int d, const float *x, const float *w, const float *b, float eps, float *y, int centred) {
  for (int row = 0; row < rows; row++, x += d, y += d) {
    const row_stats s = stats_of(x, d, eps, centred);
    const v128_t vm = wasm_f32x4_splat(s.mean), vr = wasm_f32x4_splat(s.reciprocal);
    int j = 0;
    for (; j + 4 <= d; j += 4) {
      const v128_t x_hat = wasm_f32x4_mul(centred ? wasm_f32x4_sub(wasm_v128_load(x + j), vm) : wasm_v128_load(x + j), vr);
      const v128_t scaled = wasm_f32x4_mul(x_hat, wasm_v128_load(w + j));
      wasm_v128_store(y + j, centred ? wasm_f32x4_add(scaled, wasm_v128_load(b + j)) : scaled);
    }
    for (; j < d; j++) y[j] = centred ? (x[j] - s.mean) * s.reciprocal * w[j] + b[j] : x[j] * s.reciprocal * w[j];
  }
}

__attribute__((export_name("layer_norm"))) void layer_norm(int rows, int d, const float *x, const float *w, const float *b, float eps, float *y) { norm_rows(rows, d, x, w, b, eps, y, 1); }

__attribute__((export_name("rms_norm"))) void rms_norm(int rows, int d, const float *x, const float *w, float eps, float *y) { norm_rows(rows, d, x, w, 0, eps, y, 0); }

// The input gradient of either norm (`centred` as in norm_rows).
__attribute__((noinline)) static void norm_grad_rows(int rows, int d, const float *dy, const float *x, const float *w, float eps, float *dx, int centred) {
  for (int row = 0; row < rows; row++, x += d, dy += d, dx += d) {
    const row_stats s = stats_of(x, d, eps, centred);
    const v128_t vm = wasm_f32x4_splat(s.mean), vr = wasm_f32x4_splat(s.reciprocal);
    v128_t sum_g = wasm_f32x4_splat(0.0f), sum_gx = sum_g;
    int j = 0;
    for (; j + 4 <= d; j += 4) {
      const v128_t g = wasm_f32x4_mul(wasm_v128_load(dy + j), wasm_v128_load(w + j));
      const v128_t x_hat = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(x + j), vm), vr);
      sum_g = wasm_f32x4_add(sum_g, g);
      sum_gx = wasm_f32x4_add(sum_gx, wasm_f32x4_mul(g, x_hat));
    }
    float total_g = sum_lanes(sum_g), total_gx = sum_lanes(sum_gx);
    for (int t = j; t < d; t++) {
      const float g = dy[t] * w[t];
      total_g += g;
      total_gx += g * ((x[t] - s.mean) * s.reciprocal);
    }
    const float mean_g = centred ? total_g / (float)d : 0.0f, mean_gx = total_gx / (float)d;
    const v128_t vmg = wasm_f32x4_splat(mean_g), vmgx = wasm_f32x4_splat(mean_gx);
    j = 0;
    for (; j + 4 <= d; j += 4) {
      const v128_t g = wasm_f32x4_mul(wasm_v128_load(dy + j), wasm_v128_load(w + j));
      const v128_t x_hat = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(x + j), vm), vr);
      wasm_v128_store(dx + j, wasm_f32x4_mul(wasm_f32x4_sub(wasm_f32x4_sub(g, vmg), wasm_f32x4_mul(x_hat, vmgx)), vr));
    }
    for (; j < d; j++) {
      const float x_hat = (x[j] - s.mean) * s.reciprocal;
      dx[j] = ((dy[j] * w[j] - mean_g) - x_hat * mean_gx) * s.reciprocal;
    }
  }
}

__attribute__((export_name("layer_norm_grad"))) void layer_norm_grad(int rows, int d, const float *dy, const float *x, const float *w, float eps, float *dx) {
  norm_grad_rows(rows, d, dy, x, w, eps, dx, 1);
}

__attribute__((export_name("rms_norm_grad"))) void rms_norm_grad(int rows, int d, const float *dy, const float *x, const float *w, float eps, float *dx) {
  norm_grad_rows(rows, d, dy, x, w, eps, dx, 0);
}

// The weight gradient of either norm (`centred` as in norm_rows).
__attribute__((noinline)) static void norm_weight_grad_rows(int rows, int d, const float *dy, const float *x, float eps, float *dw, int centred) {
  for (int j = 0; j < d; j++) dw[j] = 0.0f;
  for (int row = 0; row < rows; row++, x += d, dy += d) {
    const row_stats s = stats_of(x, d, eps, centred);
    const v128_t vm = wasm_f32x4_splat(s.mean), vr = wasm_f32x4_splat(s.reciprocal);
    int j = 0;
    for (; j + 4 <= d; j += 4) {
      const v128_t x_hat = wasm_f32x4_mul(wasm_f32x4_sub(wasm_v128_load(x + j), vm), vr);
      wasm_v128_store(dw + j, wasm_f32x4_add(wasm_v128_load(dw + j), wasm_f32x4_mul(wasm_v128_load(dy + j), x_hat)));
    }
    for (; j < d; j++) dw[j] += dy[j] * ((x[j] - s.mean) * s.reciprocal);
  }
}

__attribute__((export_name("layer_norm_weight_grad"))) void layer_norm_weight_grad(int rows, int d, const float *dy, const float *x, float eps, float *dw) {
  norm_weight_grad_rows(rows, d, dy, x, eps, dw, 1);
}

__attribute__((export_name("rms_norm_weight_grad"))) void rms_norm_weight_grad(int rows, int d, const float *dy, const float *x, float eps, float *dw) {
  norm_weight_grad_rows(rows, d, dy, x, eps, dw, 0);
}
