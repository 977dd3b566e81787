// One AdamW update of a parameter in a single pass, for tfjs's WASM backend (128-bit SIMD):
//   m′ = m·β1 + g·(1 − β1)
//   v′ = v·β2 + g²·(1 − β2)
//   p′ = p·decay − (m′ / (√v′ / √c2 + ε))·step_size        (decay = 1 − lr·wd, or no multiply)
// in the same order of float32 operations as the composite form (core's optimizer.ts), so the
// results are the same bits. The composite form is 13 kernels per parameter tensor, each a pass
// over it; a LoRA step updates dozens of small tensors, full fine-tuning millions of values.
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

#include "simd-lanes.h"

typedef struct {
  v128_t p, m, v;
} adamw_out;

static inline __attribute__((always_inline)) adamw_out update(v128_t p, v128_t g, v128_t m, v128_t v, v128_t beta1, v128_t rest1, v128_t beta2, v128_t rest2, v128_t decay,
                                                              int apply_decay, v128_t sqrt_c2, v128_t epsilon, v128_t step_size) {
  adamw_out out;
  out.m = wasm_f32x4_add(wasm_f32x4_mul(m, beta1), wasm_f32x4_mul(g, rest1));
  out.v = wasm_f32x4_add(wasm_f32x4_mul(v, beta2), wasm_f32x4_mul(wasm_f32x4_mul(g, g), rest2));
  const v128_t decayed = apply_decay ? wasm_f32x4_mul(p, decay) : p;
  const v128_t denominator = wasm_f32x4_add(wasm_f32x4_div(wasm_f32x4_sqrt(out.v), sqrt_c2), epsilon);
  out.p = wasm_f32x4_sub(decayed, wasm_f32x4_mul(wasm_f32x4_div(out.m, denominator), step_size));
  return out;
}

__attribute__((export_name("adamw"))) void adamw(int size, const float *p, const float *g, const float *m, const float *v, float beta1, float rest1, float beta2, float rest2,
                                                 float decay, int apply_decay, float sqrt_c2, float epsilon, float step_size, float *p_out, float *m_out, float *v_out) {
  const v128_t vb1 = wasm_f32x4_splat(beta1), vr1 = wasm_f32x4_splat(rest1), vb2 = wasm_f32x4_splat(beta2), vr2 = wasm_f32x4_splat(rest2);
  const v128_t vd = wasm_f32x4_splat(decay), vc2 = wasm_f32x4_splat(sqrt_c2), veps = wasm_f32x4_splat(epsilon), vstep = wasm_f32x4_splat(step_size);
  int i = 0;
  for (; i + 4 <= size; i += 4) {
    const adamw_out o = update(wasm_v128_load(p + i), wasm_v128_load(g + i), wasm_v128_load(m + i), wasm_v128_load(v + i), vb1, vr1, vb2, vr2, vd, apply_decay, vc2, veps, vstep);
    wasm_v128_store(p_out + i, o.p);
    wasm_v128_store(m_out + i, o.m);
    wasm_v128_store(v_out + i, o.v);
  }
  if (i < size) {
    const int lanes = size - i;
    const adamw_out o = update(load_tail(p + i, lanes, 0.0f), load_tail(g + i, lanes, 0.0f), load_tail(m + i, lanes, 0.0f), load_tail(v + i, lanes, 0.0f), vb1, vr1, vb2, vr2, vd,
                               apply_decay, vc2, veps, vstep);
    store_tail(p_out + i, o.p, lanes);
    store_tail(m_out + i, o.m, lanes);
    store_tail(v_out + i, o.v, lanes);
  }
}
