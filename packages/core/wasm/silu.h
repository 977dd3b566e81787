// SiLU (swish), Llama's activation, and its derivative in one pass each, 128-bit SIMD, for tfjs's
// WASM backend:
//   y  = x·σ(x)
//   dx = dy·σ·(1 + x·(1 − σ))
// The composite form x·sigmoid(x) costs 2 kernels forward and 5 backward over the MLP's gate
// activation, each a pass over memory, and tfjs-backend-wasm's sigmoid calls a scalar expf.
//
// Included by batch-matmul.c, whose two-thread protocol shares a call's ranges of values between the
// calling thread and its helper (silu, silu_grad and gelu_threaded there). No data, no stack.
#ifndef LORA_SILU_H
#define LORA_SILU_H
#include <wasm_simd128.h>

#include "simd-exp.h"
#include "simd-elementwise.h"

static inline v128_t silu(v128_t x) { return wasm_f32x4_mul(x, sigmoid(x)); }

static inline v128_t silu_slope(v128_t x) {
  const v128_t s = sigmoid(x);
  const v128_t one = wasm_f32x4_splat(1.0f);
  return wasm_f32x4_mul(s, wasm_f32x4_add(one, wasm_f32x4_mul(x, wasm_f32x4_sub(one, s))));
}

// y = silu(x) and dx = dy·silu′(x) for `size` values.
ELEMENTWISE_VALUES(silu_values, silu)
ELEMENTWISE_GRADIENTS(silu_gradients, silu_slope)

#endif
