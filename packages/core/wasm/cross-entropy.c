// Cross-entropy of logits [rows, n] against integer labels, per row, and its gradient, for tfjs's
// WASM backend (128-bit SIMD). With z the row's logits and c its label:
//   loss = log Σ exp(z) − z_c                  dz = dloss·(softmax(z) − onehot(c))
// Labels follow core's composite form (losses.ts): −100 is ignored (loss 0, gradient 0), another
// negative label means class 0, and a label ≥ n selects nothing (loss 0, gradient 0). The composite
// form is a log-softmax, a one-hot, products and sums: a dozen kernels over the logits each way.
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

#include "simd-exp.h"
#include "simd-lanes.h"

#define IGNORE_INDEX -100
#define PAD -3.0e38f

// log(x) for a finite x > 0 (Cephes' logf: x = m·2ᵉ with m in [√½, √2), a degree-8 polynomial in
// m − 1), relative error about 1e-7. Scalar: one per row.
static float log_positive(float x) {
  union {
    float f;
    int i;
  } bits = {x};
  int e = ((bits.i >> 23) & 0xff) - 126;
  bits.i = (bits.i & 0x007fffff) | 0x3f000000;  // m in [0.5, 1)
  float m = bits.f;
  if (m < 0.70710678f) {
    e -= 1;
    m = m + m - 1.0f;
  } else {
    m = m - 1.0f;
  }
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * (float)e;
  y += -0.5f * z;
  return m + y + 0.693359375f * (float)e;
}

// The row's maximum and Σ exp(z − max).
typedef struct {
  float max;
  float sum;
} row_exp;

static inline __attribute__((always_inline)) row_exp exp_sum(const float *z, int n) {
  const int full = n & ~3, tail = n - full;
  v128_t vmax = wasm_f32x4_splat(PAD);
  for (int j = 0; j < full; j += 4) vmax = wasm_f32x4_pmax(vmax, wasm_v128_load(z + j));
  if (tail > 0) vmax = wasm_f32x4_pmax(vmax, load_tail(z + full, tail, PAD));
  vmax = wasm_f32x4_pmax(vmax, wasm_i32x4_shuffle(vmax, vmax, 2, 3, 0, 1));
  vmax = wasm_f32x4_pmax(vmax, wasm_i32x4_shuffle(vmax, vmax, 1, 0, 3, 2));
  v128_t vsum = wasm_f32x4_splat(0.0f);
  for (int j = 0; j < full; j += 4) vsum = wasm_f32x4_add(vsum, exp_nonpositive(wasm_f32x4_sub(wasm_v128_load(z + j), vmax)));
  if (tail > 0) vsum = wasm_f32x4_add(vsum, exp_nonpositive(wasm_f32x4_sub(load_tail(z + full, tail, PAD), vmax)));
  const row_exp r = {wasm_f32x4_extract_lane(vmax, 0), sum_lanes(vsum)};
  return r;
}

// The class a label selects, or −1 for none (ignored, or past the last class).
static inline int class_of(int label, int n) {
  if (label == IGNORE_INDEX) return -1;
  const int c = label < 0 ? 0 : label;
  return c < n ? c : -1;
}

__attribute__((export_name("cross_entropy"))) void cross_entropy(int rows, int n, const float *logits, const int *labels, float *loss) {
  for (int row = 0; row < rows; row++, logits += n) {
    const int c = class_of(labels[row], n);
    if (c < 0) {
      loss[row] = 0.0f;
      continue;
    }
    const row_exp r = exp_sum(logits, n);
    // A NaN or infinite logit makes the sum non-finite: the loss is then NaN, never hidden.
    loss[row] = (r.sum > 0.0f && r.sum < 3.0e38f ? log_positive(r.sum) : __builtin_nanf("")) + r.max - logits[c];
  }
}

__attribute__((export_name("cross_entropy_grad"))) void cross_entropy_grad(int rows, int n, const float *dloss, const float *logits, const int *labels, float *dlogits) {
  const int full = n & ~3, tail = n - full;
  for (int row = 0; row < rows; row++, logits += n, dlogits += n) {
    const int c = class_of(labels[row], n);
    if (c < 0) {
      for (int j = 0; j < n; j++) dlogits[j] = 0.0f;
      continue;
    }
    const row_exp r = exp_sum(logits, n);
    const v128_t vmax = wasm_f32x4_splat(r.max), scale = wasm_f32x4_splat(dloss[row] / r.sum);
    for (int j = 0; j < full; j += 4) wasm_v128_store(dlogits + j, wasm_f32x4_mul(exp_nonpositive(wasm_f32x4_sub(wasm_v128_load(logits + j), vmax)), scale));
    if (tail > 0) store_tail(dlogits + full, wasm_f32x4_mul(exp_nonpositive(wasm_f32x4_sub(load_tail(logits + full, tail, PAD), vmax)), scale), tail);
    dlogits[c] -= dloss[row];
  }
}
