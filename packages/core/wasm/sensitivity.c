// AdaLoRA's importance bookkeeping for one factor in a single pass (PEFT's `update_ipt`), for
// tfjs's WASM backend (128-bit SIMD):
//   I  = |p·g|
//   s′ = s·β1 + I·(1 − β1)              (smoothed sensitivity)
//   u′ = u·β2 + |I − s′|·(1 − β2)       (uncertainty)
// in the same order of float32 operations as the composite form (core's sensitivity-update.ts), so
// the results are the same bits. The composite form is 10 kernels per factor, and an AdaLoRA step
// updates three factors per adapted layer; on small tensors each of tfjs's elementwise kernels
// costs about as much as waking its thread pool.
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

#include "simd-lanes.h"

typedef struct {
  v128_t s, u;
} sensitivity_out;

static inline __attribute__((always_inline)) sensitivity_out update(v128_t p, v128_t g, v128_t s, v128_t u, v128_t beta1, v128_t rest1, v128_t beta2, v128_t rest2) {
  sensitivity_out out;
  const v128_t importance = wasm_f32x4_abs(wasm_f32x4_mul(p, g));
  out.s = wasm_f32x4_add(wasm_f32x4_mul(s, beta1), wasm_f32x4_mul(importance, rest1));
  out.u = wasm_f32x4_add(wasm_f32x4_mul(u, beta2), wasm_f32x4_mul(wasm_f32x4_abs(wasm_f32x4_sub(importance, out.s)), rest2));
  return out;
}

__attribute__((export_name("sensitivity_update"))) void sensitivity_update(int size, const float *p, const float *g, const float *s, const float *u, float beta1, float rest1, float beta2,
                                                                           float rest2, float *s_out, float *u_out) {
  const v128_t vb1 = wasm_f32x4_splat(beta1), vr1 = wasm_f32x4_splat(rest1), vb2 = wasm_f32x4_splat(beta2), vr2 = wasm_f32x4_splat(rest2);
  int i = 0;
  for (; i + 4 <= size; i += 4) {
    const sensitivity_out o = update(wasm_v128_load(p + i), wasm_v128_load(g + i), wasm_v128_load(s + i), wasm_v128_load(u + i), vb1, vr1, vb2, vr2);
    wasm_v128_store(s_out + i, o.s);
    wasm_v128_store(u_out + i, o.u);
  }
  if (i < size) {
    const int lanes = size - i;
    const sensitivity_out o = update(load_tail(p + i, lanes, 0.0f), load_tail(g + i, lanes, 0.0f), load_tail(s + i, lanes, 0.0f), load_tail(u + i, lanes, 0.0f), vb1, vr1, vb2, vr2);
    store_tail(s_out + i, o.s, lanes);
    store_tail(u_out + i, o.u, lanes);
  }
}
