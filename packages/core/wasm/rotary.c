// Rotary position embedding in transformers' rotate_half form (Llama's), one pass, 128-bit SIMD, for
// tfjs's WASM backend. Each row of D = 2h values, halves x₁ and x₂, with its row of the tables c, s
// (h values each: the angles of the h frequencies):
//   y₁ = x₁·c − x₂·s,   y₂ = x₂·c + x₁·s
// The gradient is the inverse rotation, the same pass with −s. The composite form costs 6 kernels
// forward (split, negate, concatenate, two products, a sum) and as many backward, on each of q and k.
//
// Rows are x [n0, n1, n2, D]; row (i0, i1, i2) takes table row i0·s0 + i1·s1 + i2·s2, so one table
// row serves every head (the heads' axis has stride 0).
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <wasm_simd128.h>

__attribute__((export_name("rotary"))) void rotary(int n0, int n1, int n2, int d, int s0, int s1, int s2, const float *x, const float *cos_table, const float *sin_table, float sign,
                                                   float *y) {
  const int h = d / 2;
  const v128_t vsign = wasm_f32x4_splat(sign);
  for (int i0 = 0; i0 < n0; i0++) {
    for (int i1 = 0; i1 < n1; i1++) {
      for (int i2 = 0; i2 < n2; i2++) {
        const int table = (i0 * s0 + i1 * s1 + i2 * s2) * h;
        const float *c = cos_table + table, *s = sin_table + table;
        const float *x1 = x + ((i0 * n1 + i1) * n2 + i2) * d, *x2 = x1 + h;
        float *y1 = y + (x1 - x), *y2 = y1 + h;
        int j = 0;
        for (; j + 4 <= h; j += 4) {
          const v128_t a = wasm_v128_load(x1 + j), b = wasm_v128_load(x2 + j);
          const v128_t vc = wasm_v128_load(c + j), vs = wasm_f32x4_mul(vsign, wasm_v128_load(s + j));
          wasm_v128_store(y1 + j, wasm_f32x4_sub(wasm_f32x4_mul(a, vc), wasm_f32x4_mul(b, vs)));
          wasm_v128_store(y2 + j, wasm_f32x4_add(wasm_f32x4_mul(b, vc), wasm_f32x4_mul(a, vs)));
        }
        for (; j < h; j++) {
          const float a = x1[j], b = x2[j], sj = sign * s[j];
          y1[j] = a * c[j] - b * sj;
          y2[j] = b * c[j] + a * sj;
        }
      }
    }
  }
}
