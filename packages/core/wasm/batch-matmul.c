// Batched matrix product for tfjs's WASM backend: C[i] = op(A[i]) · op(B[i]) for a stack of small
// matrices (attention's q·kᵀ, p·v and their gradients), in one call, with 128-bit SIMD.
//
// Built by scripts/build-wasm.mjs into src/wasm-batch-matmul-binary.ts. The module imports the
// backend's own linear memory and touches nothing but the buffers passed in: no static data, no
// stack (every local lives in a WASM local), so it cannot clash with the backend's allocator.
//
// Operands are described by strides (in floats), so a transposed or broadcast operand is read in
// place: element (r, p) of op(A) for matrix i is a[i·a_bs + r·a_rs + p·a_cs]. Each matrix's op(A)
// is packed into panels of 4 rows and op(B) into panels of 8 columns (zero-padded), so the inner
// loop reads both contiguously: per step of k, one 4-value load of A, two of B, 8 multiply-adds
// of 4 lanes into 8 accumulators (the 4×8 register tile XNNPACK's WASM SIMD kernels use).
#include <wasm_simd128.h>

#define MR 4
#define NR 8

static void pack_b(const float *b, int k, int n, int rs, int cs, float *out) {
  for (int j0 = 0; j0 < n; j0 += NR) {
    const int columns = n - j0 < NR ? n - j0 : NR;
    for (int p = 0; p < k; p++) {
      const float *row = b + p * rs + j0 * cs;
      if (columns == NR && cs == 1) {
        wasm_v128_store(out, wasm_v128_load(row));
        wasm_v128_store(out + 4, wasm_v128_load(row + 4));
      } else {
        for (int j = 0; j < NR; j++) out[j] = j < columns ? row[j * cs] : 0.0f;
      }
      out += NR;
    }
  }
}

#define STEP(p, bp)                                                           \
  {                                                                           \
    const v128_t vb0 = wasm_v128_load(bp);                                    \
    const v128_t vb1 = wasm_v128_load((bp) + 4);                              \
    const v128_t a0 = wasm_v128_load32_splat(a0p + (p) * a_cs);               \
    const v128_t a1 = wasm_v128_load32_splat(a1p + (p) * a_cs);               \
    const v128_t a2 = wasm_v128_load32_splat(a2p + (p) * a_cs);               \
    const v128_t a3 = wasm_v128_load32_splat(a3p + (p) * a_cs);               \
    c00 = wasm_f32x4_add(c00, wasm_f32x4_mul(a0, vb0));                       \
    c01 = wasm_f32x4_add(c01, wasm_f32x4_mul(a0, vb1));                       \
    c10 = wasm_f32x4_add(c10, wasm_f32x4_mul(a1, vb0));                       \
    c11 = wasm_f32x4_add(c11, wasm_f32x4_mul(a1, vb1));                       \
    c20 = wasm_f32x4_add(c20, wasm_f32x4_mul(a2, vb0));                       \
    c21 = wasm_f32x4_add(c21, wasm_f32x4_mul(a2, vb1));                       \
    c30 = wasm_f32x4_add(c30, wasm_f32x4_mul(a3, vb0));                       \
    c31 = wasm_f32x4_add(c31, wasm_f32x4_mul(a3, vb1));                       \
  }

// One 4×8 tile of C: rows i0.. of op(A), read in place (`a` points at row i0, rows `a_rs` apart,
// values `a_cs` apart), times a packed B panel. A partial tile (rows < 4 or columns < 8, at the
// matrix's edge) repeats its last row and goes through `edge` (32 floats of scratch).
static void tile(const float *a, int a_rs, int a_cs, const float *bp, int k, float *c, int ldc, int rows, int columns, float *edge) {
  const float *a0p = a;
  const float *a1p = rows > 1 ? a + a_rs : a0p;
  const float *a2p = rows > 2 ? a + 2 * a_rs : a1p;
  const float *a3p = rows > 3 ? a + 3 * a_rs : a2p;
  v128_t c00 = wasm_f32x4_splat(0.0f), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  int p = 0;
  for (; p + 2 <= k; p += 2) {
    STEP(p, bp);
    STEP(p + 1, bp + NR);
    bp += 2 * NR;
  }
  if (p < k) STEP(p, bp);
  float *out = rows == MR && columns == NR ? c : edge;
  const int ld = out == c ? ldc : NR;
  wasm_v128_store(out, c00);
  wasm_v128_store(out + 4, c01);
  wasm_v128_store(out + ld, c10);
  wasm_v128_store(out + ld + 4, c11);
  wasm_v128_store(out + 2 * ld, c20);
  wasm_v128_store(out + 2 * ld + 4, c21);
  wasm_v128_store(out + 3 * ld, c30);
  wasm_v128_store(out + 3 * ld + 4, c31);
  if (out == c) return;
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < columns; j++) c[r * ldc + j] = edge[r * NR + j];
}

// C (row-major, [batch, m, n], contiguous) = op(A) · op(B) for each of `batch` matrices.
// `scratch` holds ceil(n/8)·8·k + 32 floats. A batch stride of 0 broadcasts an operand.
__attribute__((export_name("batch_matmul"))) void batch_matmul(int batch, int m, int k, int n, const float *a, int a_bs, int a_rs, int a_cs, const float *b,
                                                                 int b_bs, int b_rs, int b_cs, float *c, float *scratch) {
  const int b_panels = (n + NR - 1) / NR;
  float *packed_b = scratch;
  float *edge = packed_b + b_panels * NR * k;
  for (int i = 0; i < batch; i++) {
    // A broadcast B is packed once.
    if (i == 0 || b_bs != 0) pack_b(b + i * b_bs, k, n, b_rs, b_cs, packed_b);
    const float *ai = a + i * a_bs;
    float *ci = c + i * m * n;
    for (int jp = 0; jp < b_panels; jp++) {
      const int j0 = jp * NR;
      const int columns = n - j0 < NR ? n - j0 : NR;
      for (int i0 = 0; i0 < m; i0 += MR) {
        const int rows = m - i0 < MR ? m - i0 : MR;
        tile(ai + i0 * a_rs, a_rs, a_cs, packed_b + jp * NR * k, k, ci + i0 * n + j0, n, rows, columns, edge);
      }
    }
  }
}
