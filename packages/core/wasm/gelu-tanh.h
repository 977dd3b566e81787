// GPT-2's gelu_new and its derivative in one pass each, 128-bit SIMD, for tfjs's WASM backend:
//   y  = x·σ(u),  u = k·x·(1 + a·x²),  k = 2·√(2/π), a = 0.044715   (0.5·(1 + tanh(v)) = σ(2v))
//   dx = dy·(σ + x·σ·(1 − σ)·k·(1 + 3a·x²))
// The composite form costs 7 kernels forward and 8 backward over the MLP's largest activation,
// each a pass over memory, and tfjs-backend-wasm's sigmoid calls a scalar expf.
//
// Included by batch-matmul.c, whose two-thread protocol shares a call's ranges of values between the
// calling thread and its helper (gelu_tanh, gelu_tanh_grad and gelu_threaded there). No data, no stack.
#ifndef LORA_GELU_TANH_H
#define LORA_GELU_TANH_H
#include <wasm_simd128.h>

#include "simd-exp.h"
#include "simd-elementwise.h"
#include "simd-lanes.h"

#define K 1.5957691216057308f   // 2·√(2/π)
#define A 0.044715f

static inline v128_t gate(v128_t x, v128_t squared) {
  const v128_t inner = wasm_f32x4_add(wasm_f32x4_splat(1.0f), wasm_f32x4_mul(wasm_f32x4_splat(A), squared));
  return sigmoid(wasm_f32x4_mul(wasm_f32x4_mul(wasm_f32x4_splat(K), x), inner));
}

static inline v128_t gelu(v128_t x) { return wasm_f32x4_mul(x, gate(x, wasm_f32x4_mul(x, x))); }

static inline v128_t gelu_slope(v128_t x) {
  const v128_t squared = wasm_f32x4_mul(x, x);
  const v128_t g = gate(x, squared);
  const v128_t one = wasm_f32x4_splat(1.0f);
  // σ + x·σ·(1 − σ)·k·(1 + 3a·x²)
  const v128_t du = wasm_f32x4_mul(wasm_f32x4_splat(K), wasm_f32x4_add(one, wasm_f32x4_mul(wasm_f32x4_splat(3.0f * A), squared)));
  return wasm_f32x4_add(g, wasm_f32x4_mul(wasm_f32x4_mul(wasm_f32x4_mul(x, g), wasm_f32x4_sub(one, g)), du));
}

// y = f(x) and dx = dy·f′(x) for `size` values.
ELEMENTWISE_VALUES(gelu_values, gelu)
ELEMENTWISE_GRADIENTS(gelu_gradients, gelu_slope)

#endif
