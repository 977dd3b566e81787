// Strided block copies for tfjs's WASM backend's data-movement kernels (Transpose keeping the
// last axis, Concat, SplitV): block (i0, i1, i2) of `bytes` bytes goes from
// src + i0·ss0 + i1·ss1 + i2·ss2 to dst + i0·ds0 + i1·ds1 + i2·ds2 (strides in bytes). One call
// replaces thousands of calls from JS (attention's head split moves 64-value rows).
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

static inline void copy_block(unsigned char *dst, const unsigned char *src, int bytes) {
  int k = 0;
  for (; k + 16 <= bytes; k += 16) wasm_v128_store(dst + k, wasm_v128_load(src + k));
  for (; k < bytes; k++) dst[k] = src[k];
}

__attribute__((export_name("copy_blocks"))) void copy_blocks(int bytes, unsigned char *dst, const unsigned char *src, int n0, int ss0, int ds0, int n1, int ss1, int ds1,
                                                               int n2, int ss2, int ds2) {
  for (int i0 = 0; i0 < n0; i0++)
    for (int i1 = 0; i1 < n1; i1++)
      for (int i2 = 0; i2 < n2; i2++) copy_block(dst + i0 * ds0 + i1 * ds1 + i2 * ds2, src + i0 * ss0 + i1 * ss1 + i2 * ss2, bytes);
}
