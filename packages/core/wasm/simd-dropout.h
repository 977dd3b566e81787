// The dropout mask of core's fused kernels, four elements at a time: element i of a tensor is kept
// (times `scale`) when the top 24 bits of hash(seed, i) are ≥ `threshold`, else 0, with hash murmur3's
// 32-bit finalizer of seed ^ (i + 1)·0x9e3779b9 (random-scope.ts's hashCounter). Shared by dropout.c
// and causal attention's kernel (causal-attention.h), which drops its probabilities with the same
// mask the dropout kernel gives the [B, H, T, T] tensor of them.
#ifndef LORA_SIMD_DROPOUT_H
#define LORA_SIMD_DROPOUT_H
#include <wasm_simd128.h>

// Counters (i + 1) → four 32-bit hashes.
static inline v128_t hash(v128_t counters, v128_t seed) {
  v128_t h = wasm_v128_xor(seed, wasm_i32x4_mul(counters, wasm_u32x4_splat(0x9e3779b9u)));
  h = wasm_i32x4_mul(wasm_v128_xor(h, wasm_u32x4_shr(h, 16)), wasm_u32x4_splat(0x85ebca6bu));
  h = wasm_i32x4_mul(wasm_v128_xor(h, wasm_u32x4_shr(h, 13)), wasm_u32x4_splat(0xc2b2ae35u));
  return wasm_v128_xor(h, wasm_u32x4_shr(h, 16));
}

// x·m for the four elements whose counters are given. The top 24 bits are < 2²⁴ and the threshold
// ≤ 2²⁴, so a signed compare is exact; its all-ones lanes select the scale's bits, the others 0.
static inline v128_t dropped(v128_t x, v128_t counters, v128_t seed, v128_t threshold, v128_t scale) {
  const v128_t kept = wasm_i32x4_ge(wasm_u32x4_shr(hash(counters, seed), 8), threshold);
  return wasm_f32x4_mul(x, wasm_v128_and(scale, kept));
}

#endif
