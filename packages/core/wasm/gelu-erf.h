// BERT's exact gelu and its derivative in one pass each, 128-bit SIMD, for tfjs's WASM backend:
//   y  = x·Φ(x),  Φ(x) = 0.5·(1 + erf(x/√2)) = 0.5·erfc(−x/√2)
//   dx = dy·(Φ(x) + x·φ(x)),  φ(x) = e^(−x²/2)/√(2π)
// The composite form runs tfjs-backend-wasm's Erf forward and Exp backward, each a scalar libm
// call a value (a fifth of a BERT LoRA step on `small`'s sizes), plus four more passes each way.
//
// erfc(z), z ≥ 0, as t·e^(−z² + p(t)), t = 1/(1 + z/2), p a degree-9 polynomial (the Chebyshev
// fit of Numerical Recipes' erfcc): relative error below 1.2e−7 for every z, so Φ keeps its
// relative accuracy in the far negative tail, where 1 + erf would cancel.
//
// Included by batch-matmul.c beside gelu-tanh.h (the same two-thread sharing). No data, no stack.
#ifndef LORA_GELU_ERF_H
#define LORA_GELU_ERF_H
#include <wasm_simd128.h>

#include "simd-exp.h"
#include "simd-elementwise.h"
#include "simd-lanes.h"

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f

// Φ(x) for four values.
static inline v128_t normal_cdf(v128_t x) {
  const v128_t one = wasm_f32x4_splat(1.0f);
  const v128_t z = wasm_f32x4_mul(wasm_f32x4_abs(x), wasm_f32x4_splat(INV_SQRT2));
  const v128_t t = wasm_f32x4_div(one, wasm_f32x4_add(one, wasm_f32x4_mul(z, wasm_f32x4_splat(0.5f))));
  // p(t) = c0 + c1·t + … + c9·t⁹ in Estrin's order (pairs, then t², t⁴, t⁸): a chain of 5
  // dependent steps after t instead of Horner's 9, which bound the loop.
  const v128_t t2 = wasm_f32x4_mul(t, t), t4 = wasm_f32x4_mul(t2, t2), t8 = wasm_f32x4_mul(t4, t4);
#define PAIR(c0, c1) wasm_f32x4_add(wasm_f32x4_splat(c0), wasm_f32x4_mul(t, wasm_f32x4_splat(c1)))
  const v128_t low = wasm_f32x4_add(PAIR(-1.26551223f, 1.00002368f), wasm_f32x4_mul(t2, PAIR(0.37409196f, 0.09678418f)));
  const v128_t high = wasm_f32x4_add(PAIR(-0.18628806f, 0.27886807f), wasm_f32x4_mul(t2, PAIR(-1.13520398f, 1.48851587f)));
  const v128_t p = wasm_f32x4_add(wasm_f32x4_add(low, wasm_f32x4_mul(t4, high)), wasm_f32x4_mul(t8, PAIR(-0.82215223f, 0.17087277f)));
#undef PAIR
  // Half of erfc(z): Φ(x) for x ≤ 0, 1 − Φ(x) for x > 0. The exponent is ≤ 0 but for rounding near
  // z = 0; exp_clamped takes either sign (and keeps NaN).
  const v128_t half = wasm_f32x4_mul(wasm_f32x4_mul(t, wasm_f32x4_splat(0.5f)), exp_clamped(wasm_f32x4_sub(p, wasm_f32x4_mul(z, z))));
  return wasm_v128_bitselect(wasm_f32x4_sub(one, half), half, wasm_f32x4_gt(x, wasm_f32x4_splat(0.0f)));
}

static inline v128_t gelu_erf(v128_t x) { return wasm_f32x4_mul(x, normal_cdf(x)); }

static inline v128_t gelu_erf_slope(v128_t x) {
  const v128_t density = wasm_f32x4_mul(wasm_f32x4_splat(INV_SQRT_2PI), exp_nonpositive(wasm_f32x4_mul(wasm_f32x4_mul(x, x), wasm_f32x4_splat(-0.5f))));
  return wasm_f32x4_add(normal_cdf(x), wasm_f32x4_mul(x, density));
}

// y = f(x) and dx = dy·f′(x) for `size` values.
ELEMENTWISE_VALUES(gelu_erf_values, gelu_erf)
ELEMENTWISE_GRADIENTS(gelu_erf_gradients, gelu_erf_slope)

#endif
