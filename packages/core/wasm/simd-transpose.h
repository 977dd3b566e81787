// A 4×4 block of 4-byte values transposed in registers. Shared by the batched matMul (packing a
// transposed B) and the block copies (Transpose).
#ifndef LORA_SIMD_TRANSPOSE_H
#define LORA_SIMD_TRANSPOSE_H
#include <wasm_simd128.h>

// The block whose rows are r0..r3, stored transposed: its column i at dst + i·dst_stride
// (dst_stride in 4-byte values).
static inline void store_transposed_4x4(v128_t r0, v128_t r1, v128_t r2, v128_t r3, unsigned *dst, int dst_stride) {
  const v128_t t0 = wasm_i32x4_shuffle(r0, r1, 0, 4, 1, 5), t1 = wasm_i32x4_shuffle(r0, r1, 2, 6, 3, 7);
  const v128_t t2 = wasm_i32x4_shuffle(r2, r3, 0, 4, 1, 5), t3 = wasm_i32x4_shuffle(r2, r3, 2, 6, 3, 7);
  wasm_v128_store(dst, wasm_i32x4_shuffle(t0, t2, 0, 1, 4, 5));
  wasm_v128_store(dst + dst_stride, wasm_i32x4_shuffle(t0, t2, 2, 3, 6, 7));
  wasm_v128_store(dst + 2 * dst_stride, wasm_i32x4_shuffle(t1, t3, 0, 1, 4, 5));
  wasm_v128_store(dst + 3 * dst_stride, wasm_i32x4_shuffle(t1, t3, 2, 3, 6, 7));
}

#endif
