// The loops of a fused elementwise activation (gelu-tanh.h, gelu-erf.h): its values, and its
// gradient dy·f′(x), over `size` floats. Two vectors per iteration (their exp and polynomial chains
// are independent, which the CPU overlaps), then one, then the last 1–3 values through a padded
// vector. `f` and `slope` map a v128_t of x to one of f(x) and f′(x).
#ifndef LORA_SIMD_ELEMENTWISE_H
#define LORA_SIMD_ELEMENTWISE_H
#include <wasm_simd128.h>

#include "simd-lanes.h"

#define ELEMENTWISE_VALUES(name, f)                                                                  \
  __attribute__((noinline)) static void name(int size, const float *x, float *y) {                   \
    int i = 0;                                                                                       \
    for (; i + 8 <= size; i += 8) {                                                                  \
      const v128_t a = f(wasm_v128_load(x + i));                                                     \
      const v128_t b = f(wasm_v128_load(x + i + 4));                                                 \
      wasm_v128_store(y + i, a);                                                                     \
      wasm_v128_store(y + i + 4, b);                                                                 \
    }                                                                                                \
    for (; i + 4 <= size; i += 4) wasm_v128_store(y + i, f(wasm_v128_load(x + i)));                  \
    if (i < size) store_tail(y + i, f(load_tail(x + i, size - i, 0.0f)), size - i);                   \
  }

#define ELEMENTWISE_GRADIENTS(name, slope)                                                                                        \
  __attribute__((noinline)) static void name(int size, const float *dy, const float *x, float *dx) {                              \
    int i = 0;                                                                                                                    \
    for (; i + 8 <= size; i += 8) {                                                                                               \
      const v128_t a = wasm_f32x4_mul(wasm_v128_load(dy + i), slope(wasm_v128_load(x + i)));                                      \
      const v128_t b = wasm_f32x4_mul(wasm_v128_load(dy + i + 4), slope(wasm_v128_load(x + i + 4)));                              \
      wasm_v128_store(dx + i, a);                                                                                                 \
      wasm_v128_store(dx + i + 4, b);                                                                                             \
    }                                                                                                                             \
    for (; i + 4 <= size; i += 4) wasm_v128_store(dx + i, wasm_f32x4_mul(wasm_v128_load(dy + i), slope(wasm_v128_load(x + i)))); \
    if (i < size) store_tail(dx + i, wasm_f32x4_mul(load_tail(dy + i, size - i, 0.0f), slope(load_tail(x + i, size - i, 0.0f))), size - i); \
  }

#endif
