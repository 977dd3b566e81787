// Strided block copies and transposes for tfjs's WASM backend's data-movement kernels (Transpose keeping the
// last axis, Concat, SplitV): block (i0, i1, i2) of `bytes` bytes goes from
// src + i0·ss0 + i1·ss1 + i2·ss2 to dst + i0·ds0 + i1·ds1 + i2·ds2 (strides in bytes). One call
// replaces thousands of calls from JS (attention's head split moves 64-value rows).
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

#include "simd-transpose.h"

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

// The last two axes of a stack of matrices swapped: dst[b][j][i] = src[b][i][j] for 4-byte values
// (float32, int32), in 16×16 tiles (both sides stay in cache) of 4×4 blocks transposed in
// registers. tfjs-backend-wasm moves such a transpose one value at a time.
__attribute__((export_name("transpose_last_two"))) void transpose_last_two(int batch, int rows, int cols, const unsigned *src, unsigned *dst) {
  for (int b = 0; b < batch; b++, src += rows * cols, dst += rows * cols) {
    for (int i1 = 0; i1 < rows; i1 += 16) {
      const int i_end = i1 + 16 < rows ? i1 + 16 : rows;
      for (int j1 = 0; j1 < cols; j1 += 16) {
        const int j_end = j1 + 16 < cols ? j1 + 16 : cols;
        int i = i1;
        for (; i + 4 <= i_end; i += 4) {
          int j = j1;
          for (; j + 4 <= j_end; j += 4) store_transposed_4x4(wasm_v128_load(src + i * cols + j), wasm_v128_load(src + (i + 1) * cols + j), wasm_v128_load(src + (i + 2) * cols + j),
                                                                   wasm_v128_load(src + (i + 3) * cols + j), dst + j * rows + i, rows);
          for (; j < j_end; j++)
            for (int r = i; r < i + 4; r++) dst[j * rows + r] = src[r * cols + j];
        }
        for (; i < i_end; i++)
          for (int j = j1; j < j_end; j++) dst[j * rows + i] = src[i * cols + j];
      }
    }
  }
}
