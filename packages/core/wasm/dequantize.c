// Blockwise 4-bit dequantization (bitsandbytes' NF4/FP4 layout, QLoRA's frozen weights) for tfjs's
// WASM backend, 128-bit SIMD:
//   out[i] = float32(code[nibble(i)] · absmax[i / block_size]),
// nibble(i) the high 4 bits of packed[i / 2] for an even i, the low 4 bits for an odd one. The
// JavaScript loop (@lora/quant's dequantize4bit) computes the same float32 products, so the same
// bits. QLoRA dequantizes every 4-bit weight in each forward and backward pass: in JavaScript about
// 3 ns a value, a tenth of a QLoRA step of the bench's small model.
//
// A block's 16 products are a 16-entry table of floats; i8x16.swizzle looks 16 indices up in a
// 16-byte table at once, so the table is held as four byte planes (plane j: byte j of each entry)
// and each plane looked up with the same 16 nibbles; the four results, interleaved byte by byte,
// are the 16 floats.
//
// Linked into the fused-kernels module by scripts/build-wasm.mjs: no data, no stack.
#include <stdint.h>
#include <wasm_simd128.h>

// The 16 floats of t0..t3 (entries 0-3, 4-7, 8-11, 12-15) as four byte planes.
static inline __attribute__((always_inline)) void byte_planes(v128_t t0, v128_t t1, v128_t t2, v128_t t3, v128_t *p0, v128_t *p1, v128_t *p2, v128_t *p3) {
  // Bytes 0 and 1 of entries 0-7, then of 8-15; bytes 2 and 3 likewise.
  const v128_t low01 = wasm_i8x16_shuffle(t0, t1, 0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
  const v128_t high01 = wasm_i8x16_shuffle(t2, t3, 0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
  const v128_t low23 = wasm_i8x16_shuffle(t0, t1, 2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
  const v128_t high23 = wasm_i8x16_shuffle(t2, t3, 2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
  *p0 = wasm_i8x16_shuffle(low01, high01, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  *p1 = wasm_i8x16_shuffle(low01, high01, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  *p2 = wasm_i8x16_shuffle(low23, high23, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
  *p3 = wasm_i8x16_shuffle(low23, high23, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}

// The 16 table entries the 16 indices (0-15) pick, as 16 floats at out.
static inline __attribute__((always_inline)) void look_up16(v128_t indices, v128_t p0, v128_t p1, v128_t p2, v128_t p3, float *out) {
  const v128_t b0 = wasm_i8x16_swizzle(p0, indices), b1 = wasm_i8x16_swizzle(p1, indices);
  const v128_t b2 = wasm_i8x16_swizzle(p2, indices), b3 = wasm_i8x16_swizzle(p3, indices);
  // Bytes 0|1 and 2|3 of values 0-7, then of 8-15, as 16-bit pairs.
  const v128_t low01 = wasm_i8x16_shuffle(b0, b1, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const v128_t low23 = wasm_i8x16_shuffle(b2, b3, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const v128_t high01 = wasm_i8x16_shuffle(b0, b1, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const v128_t high23 = wasm_i8x16_shuffle(b2, b3, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  wasm_v128_store(out, wasm_i16x8_shuffle(low01, low23, 0, 8, 1, 9, 2, 10, 3, 11));
  wasm_v128_store(out + 4, wasm_i16x8_shuffle(low01, low23, 4, 12, 5, 13, 6, 14, 7, 15));
  wasm_v128_store(out + 8, wasm_i16x8_shuffle(high01, high23, 0, 8, 1, 9, 2, 10, 3, 11));
  wasm_v128_store(out + 12, wasm_i16x8_shuffle(high01, high23, 4, 12, 5, 13, 6, 14, 7, 15));
}

/// `length` values from `packed` (two 4-bit codes a byte, the first in the high nibble), `absmax`
/// (one scale per `block_size` values) and `code` (16 floats) into `out`.
__attribute__((export_name("dequantize_4bit"))) void dequantize_4bit(int length, const uint8_t *packed, const float *absmax, int block_size, const float *code, float *out) {
  const v128_t c0 = wasm_v128_load(code), c1 = wasm_v128_load(code + 4), c2 = wasm_v128_load(code + 8), c3 = wasm_v128_load(code + 12);
  const v128_t low_nibbles = wasm_i8x16_splat(0x0f);
  for (int start = 0; start < length; start += block_size) {
    const int end = start + block_size < length ? start + block_size : length;
    const v128_t scale = wasm_f32x4_splat(absmax[start / block_size]);
    const v128_t t0 = wasm_f32x4_mul(c0, scale), t1 = wasm_f32x4_mul(c1, scale), t2 = wasm_f32x4_mul(c2, scale), t3 = wasm_f32x4_mul(c3, scale);
    int i = start;
    // 32 values (16 bytes) at a time from an even index: bytes align with values.
    if ((i & 1) == 0) {
      v128_t p0, p1, p2, p3;
      byte_planes(t0, t1, t2, t3, &p0, &p1, &p2, &p3);
      for (; i + 32 <= end; i += 32) {
        const v128_t bytes = wasm_v128_load(packed + (i >> 1));
        const v128_t high = wasm_u8x16_shr(bytes, 4), low = wasm_v128_and(bytes, low_nibbles);
        // Value 2k is byte k's high nibble, value 2k + 1 its low one.
        look_up16(wasm_i8x16_shuffle(high, low, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), p0, p1, p2, p3, out + i);
        look_up16(wasm_i8x16_shuffle(high, low, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31), p0, p1, p2, p3, out + i + 16);
      }
    }
    // The rest of the block (and blocks of odd sizes) value by value: the same float32 product.
    const float block_scale = absmax[start / block_size];
    for (; i < end; i++) {
      const int byte = packed[i >> 1];
      out[i] = code[(i & 1) == 0 ? byte >> 4 : byte & 0x0f] * block_scale;
    }
  }
}
