// Inverted dropout in one pass, 128-bit SIMD, for tfjs's WASM backend:
//   y[i] = x[i]·m[i],  m[i] = scale if (hash(seed, i) >> 8) ≥ threshold, else 0
// with hash(seed, i) murmur3's 32-bit finalizer of seed ^ (i + 1)·0x9e3779b9: random-scope.ts's
// hashCounter, four indices per vector. The mask is a pure function of (seed, index), so nothing is
// drawn or stored, and the gradient is this kernel on dy with the same seed. The composite form
// (dropout.ts) computes the same mask in JS and multiplies x by it: the same float32 products, so
// the same bits. tfjs's form is 5 kernels forward (randomUniform, greaterEqual, cast, mul, mul).
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

#include "simd-dropout.h"
#include "simd-lanes.h"

__attribute__((export_name("dropout"))) void dropout(int size, const float *x, unsigned seed, int threshold, float scale, float *y) {
  const v128_t vseed = wasm_u32x4_splat(seed), vthreshold = wasm_i32x4_splat(threshold), vscale = wasm_f32x4_splat(scale);
  const v128_t four = wasm_i32x4_splat(4), eight = wasm_i32x4_splat(8);
  v128_t counters = wasm_i32x4_make(1, 2, 3, 4);
  int i = 0;
  // Two vectors per iteration: each hash is a chain of dependent multiplies the CPU can overlap.
  for (; i + 8 <= size; i += 8) {
    const v128_t a = dropped(wasm_v128_load(x + i), counters, vseed, vthreshold, vscale);
    const v128_t b = dropped(wasm_v128_load(x + i + 4), wasm_i32x4_add(counters, four), vseed, vthreshold, vscale);
    wasm_v128_store(y + i, a);
    wasm_v128_store(y + i + 4, b);
    counters = wasm_i32x4_add(counters, eight);
  }
  for (; i + 4 <= size; i += 4) {
    wasm_v128_store(y + i, dropped(wasm_v128_load(x + i), counters, vseed, vthreshold, vscale));
    counters = wasm_i32x4_add(counters, four);
  }
  if (i < size) store_tail(y + i, dropped(load_tail(x + i, size - i, 0.0f), counters, vseed, vthreshold, vscale), size - i);
}
