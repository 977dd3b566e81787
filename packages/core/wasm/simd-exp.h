// exp(t), four lanes, for core's fused kernels (gelu-tanh.h, silu.h, softmax.c, cross-entropy.c, causal-attention.h),
// and the sigmoid of gelu_new and SiLU.
//
// t = n·ln2 + r (|r| ≤ ln2/2, Cody and Waite's two-part ln2), e^r ≈ 1 + r + r²·q(r) with q of
// degree 4, then 2ⁿ put in the exponent bits. q's coefficients are a minimax fit of e^r's relative
// error on [−ln2/2, ln2/2] (linear programming on 6,000 points, then rounded to float32); q is
// evaluated in Estrin's order (r², r⁴ and the pairs at once), so the longest chain of dependent
// operations is 9 after r, not Horner's 15: the loops that call it are bound by that latency
// (measured in causal attention's softmax, the kernel's costliest part after its products).
// Simulated op by op in float32 against float64 on 2.6 million values of t in [−87, 87]: at
// most 0.98 units in the last place (mean 0.27), as Cephes' expf (the form used before).
// exp_nonpositive (t ≤ 0, softmax and cross-entropy): below −87 (where 2ⁿ would leave the normal
// range) the result is exactly 0, as the true value rounds to in float32 (< 1.7e-38, far below
// any sum it enters), so a masked softmax score (−1e9) weighs exactly nothing. exp_clamped (any
// t, gelu's sigmoid): see below.
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
  const v128_t r2 = wasm_f32x4_mul(r, r), r4 = wasm_f32x4_mul(r2, r2);
  const v128_t low = wasm_f32x4_add(wasm_f32x4_mul(r, wasm_f32x4_splat(0x1.555454p-3f)), wasm_f32x4_splat(0x1.fffffcp-2f));
  const v128_t high = wasm_f32x4_add(wasm_f32x4_mul(r, wasm_f32x4_splat(0x1.125f16p-7f)), wasm_f32x4_splat(0x1.555786p-5f));
  const v128_t q = wasm_f32x4_add(wasm_f32x4_add(low, wasm_f32x4_mul(r2, high)), wasm_f32x4_mul(r4, wasm_f32x4_splat(0x1.6bd9a8p-10f)));
  const v128_t p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(r2, q), r), wasm_f32x4_splat(1.0f));
  // (n + 127) << 23 as float bits is 2ⁿ. The shifted sum's bits are magic's plus n, and magic's low
  // 9 bits are 0, so its bits plus 127 have the low 9 bits of n + 127: all the shift keeps.
  const v128_t scale = wasm_i32x4_shl(wasm_i32x4_add(shifted, wasm_i32x4_splat(127)), 23);
  return wasm_f32x4_mul(p, scale);
}

static inline v128_t exp_nonpositive(v128_t t) {
  // Lanes below −87 cleared; NaN stays NaN (so a non-finite input is never hidden as a 0): a NaN
  // lane compares false, and pmax (x86's maxps, one instruction; f32x4_max adds NaN handling that
  // we do not need here) returns its first operand when the comparison fails.
  v128_t below = wasm_f32x4_lt(t, wasm_f32x4_splat(-87.0f));
  // Hides that `below` is a comparison: clang would make the andnot a select (v128.bitselect with a
  // zero vector, three x64 instructions and a register for the zeros, against one).
  __asm__("" : "+r"(below));
  return wasm_v128_andnot(exp_in_range(wasm_f32x4_pmax(t, wasm_f32x4_splat(-87.0f))), below);
}

// exp(t) with t clamped to [−87, 87] first: e^±87 (about 1.6e−38 and 6.1e37) stand for anything
// beyond, which is what a sigmoid 1/(1 + e^−u) needs (σ is then exactly 1, or 1.6e−38 where the
// true value is smaller). NaN stays NaN: pmax and pmin return their first operand when a
// comparison with NaN fails.
static inline v128_t exp_clamped(v128_t t) {
  return exp_in_range(wasm_f32x4_pmin(wasm_f32x4_pmax(t, wasm_f32x4_splat(-87.0f)), wasm_f32x4_splat(87.0f)));
}

// σ(u) = 1/(1 + e^−u), with e^−u clamped to [e^−87, e^87]: one division, no select (gelu_new's gate,
// SiLU). (Through e^−|u| and a select between 1/(1 + e) and e/(1 + e), which never leaves [0, 1], it
// took 22-27% longer per value.) Beyond the clamp σ is 1, or 1.6e−38 where the true value is
// smaller: x·σ is then x·1.6e−38 instead of a smaller number, both 0 at the 1e−6 any comparison uses.
static inline v128_t sigmoid(v128_t u) {
  const v128_t one = wasm_f32x4_splat(1.0f);
  return wasm_f32x4_div(one, wasm_f32x4_add(one, exp_clamped(wasm_f32x4_neg(u))));
}

#endif
