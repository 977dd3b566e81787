// exp(t), four lanes, for core's fused kernels (gelu-tanh.h, softmax.c, cross-entropy.c, causal-attention.h).
//
// Cephes' expf: t = n·ln2 + r, |r| ≤ ln2/2, a degree-6 polynomial in r, then 2ⁿ put in the
// exponent bits; relative error about 2e-7. exp_nonpositive (t ≤ 0, softmax and cross-entropy):
// below −87 (where 2ⁿ would leave the normal range) the result is exactly 0, as the true value
// rounds to in float32 (< 1.7e-38, far below any sum it enters), so a masked softmax score (−1e9)
// weighs exactly nothing. exp_clamped (any t, gelu's sigmoid): see below.
#ifndef LORA_SIMD_EXP_H
#define LORA_SIMD_EXP_H
#include <wasm_simd128.h>

// exp(t) for t in [−87, 87] (callers clamp): the reduction, the polynomial and 2ⁿ.
static inline v128_t exp_in_range(v128_t t) {
  // n = round(t·log₂e) by the 1.5·2²³ trick: the sum's low mantissa bits are n itself (as an
  // integer, plus the constant's bits), which also gives 2ⁿ without a float → int conversion.
  const v128_t magic = wasm_f32x4_splat(12582912.0f);
  const v128_t shifted = wasm_f32x4_add(wasm_f32x4_mul(t, wasm_f32x4_splat(1.44269504088896341f)), magic);
  const v128_t n = wasm_f32x4_sub(shifted, magic);
  v128_t r = wasm_f32x4_sub(t, wasm_f32x4_mul(n, wasm_f32x4_splat(0.693359375f)));
  r = wasm_f32x4_sub(r, wasm_f32x4_mul(n, wasm_f32x4_splat(-2.12194440e-4f)));
  v128_t p = wasm_f32x4_splat(1.9875691500e-4f);
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.3981999507e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(8.3334519073e-3f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(4.1665795894e-2f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.6666665459e-1f));
  p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(5.0000001201e-1f));
  p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_mul(p, r), r), r), wasm_f32x4_splat(1.0f));
  // (n + 127) << 23 as float bits is 2ⁿ; n's integer value is the shifted sum's bits less magic's.
  const v128_t scale = wasm_i32x4_shl(wasm_i32x4_add(wasm_i32x4_sub(shifted, magic), wasm_i32x4_splat(127)), 23);
  return wasm_f32x4_mul(p, scale);
}

static inline v128_t exp_nonpositive(v128_t t) {
  // NaN stays NaN (so a non-finite input is never hidden as a 0).
  const v128_t in_range = wasm_v128_or(wasm_f32x4_ge(t, wasm_f32x4_splat(-87.0f)), wasm_f32x4_ne(t, t));
  // pmax is x86's maxps (one instruction; f32x4_max adds NaN handling that we do not need here).
  return wasm_v128_and(exp_in_range(wasm_f32x4_pmax(t, wasm_f32x4_splat(-87.0f))), in_range);
}

// exp(t) with t clamped to [−87, 87] first: e^±87 (about 1.6e−38 and 6.1e37) stand for anything
// beyond, which is what a sigmoid 1/(1 + e^−u) needs (σ is then exactly 1, or 1.6e−38 where the
// true value is smaller). NaN stays NaN: pmax and pmin return their first operand when a
// comparison with NaN fails.
static inline v128_t exp_clamped(v128_t t) {
  return exp_in_range(wasm_f32x4_pmin(wasm_f32x4_pmax(t, wasm_f32x4_splat(-87.0f)), wasm_f32x4_splat(87.0f)));
}

#endif
