// Batched matrix product for tfjs's WASM backend: C[i] = op(A[i]) · op(B[i]) for a stack of small
// matrices (attention's q·kᵀ, p·v and their gradients), in one call, with 128-bit SIMD.
//
// Built by scripts/build-wasm.mjs into src/wasm-batch-matmul-binary.ts. The module imports the
// backend's own linear memory and touches nothing but the buffers passed in: no static data, no
// stack (every local lives in a WASM local), so it cannot clash with the backend's allocator.
//
// Operands are described by strides (in floats), so a transposed or broadcast operand is read in
// place: element (r, p) of op(A) for matrix i is a[i·a_bs + r·a_rs + p·a_cs]. op(A) is read in
// place; op(B) is packed into panels of 8 columns (zero-padded), so the inner loop reads it
// contiguously — except for products of few rows, which read B's rows in place (see
// IN_PLACE_ROWS). Per step of k: four 1-value splat loads of A, two 4-value loads of B, 8
// multiply-adds of 4 lanes into 8 accumulators (the 4×8 register tile XNNPACK's WASM SIMD kernels
// use); rows past the last full tile take a 1×8 tile each.
//
// The shared-memory build (tfjs's threaded WASM backend) also exports a two-thread entry, where
// the calling thread and one helper thread (a Worker running `helper_loop` on the same memory)
// share the chunks of a product: see "Two threads" below.

#include <wasm_simd128.h>

#include "simd-madd.h"
#include "simd-transpose.h"

#define MR 4
#define NR 8

__attribute__((noinline)) static void pack_b(const float *b, int k, int n, int rs, int cs, float *out) {
  for (int j0 = 0; j0 < n; j0 += NR) {
    const int columns = n - j0 < NR ? n - j0 : NR;
    int p = 0;
    // A transposed B (attention's kᵀ, a weight used as Wᵀ) has its columns contiguous: a full
    // panel is packed 4×4 blocks at a time, four 4-value loads and a transpose in registers,
    // instead of one strided scalar load per value.
    if (columns == NR && rs == 1) {
      const float *col = b + j0 * cs;
      for (; p + 4 <= k; p += 4) {
        // Column j's values p..p+3 are a row of the block; stored transposed, they are rows p..p+3.
        store_transposed_4x4(wasm_v128_load(col + p), wasm_v128_load(col + cs + p), wasm_v128_load(col + 2 * cs + p), wasm_v128_load(col + 3 * cs + p), (unsigned *)out, NR);
        store_transposed_4x4(wasm_v128_load(col + 4 * cs + p), wasm_v128_load(col + 5 * cs + p), wasm_v128_load(col + 6 * cs + p), wasm_v128_load(col + 7 * cs + p), (unsigned *)(out + 4), NR);
        out += 4 * NR;
      }
    }
    for (; p < k; p++) {
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

// One 4×8 tile of C: rows i0..i0+3 of op(A), read in place (`a` points at row i0, rows `a_rs`
// apart, values `a_cs` apart), times a panel of 8 columns of op(B) whose rows are `b_step` floats
// apart (8 when packed, B's row stride when read in place). A partial panel (columns < 8, at the
// matrix's edge) goes through `edge` (32 floats of scratch). With `init` (not null), each sum
// starts from its value there (row r's 8 values at init + r·init_ld: a bias row for init_ld 0, a
// LoRA layer's base output for init_ld its row stride) instead of 0.
//
// The loop is written for V8's register allocator, which has 15 of x64's 16 vector registers: one
// step of k at a time (not unrolled), each row's splat used as soon as it is loaded, so the live
// values are the 8 accumulators, B's two vectors, one splat and one product. Unrolled by two,
// clang hoisted both steps' loads and V8 kept four accumulators on the stack, a load and a store
// each per step: measured on one core, 30-31 GFLOP/s against 38-42 this way. `init` only sets the
// accumulators' first values, so the loop is the same; tile() and tile_init() are two copies (the
// one without `init` has no branch on it), not one function taking a null.
static inline __attribute__((always_inline)) void tile_from(const float *a, int a_rs, int a_cs, const float *bp, int b_step, int k, float *c, int ldc, int columns, float *edge,
                                                             const float *init, int init_ld) {
  const float *a0p = a, *a1p = a + a_rs, *a2p = a + 2 * a_rs, *a3p = a + 3 * a_rs;
  v128_t c00 = wasm_f32x4_splat(0.0f), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
  if (init != 0) {
    c00 = wasm_v128_load(init);
    c01 = wasm_v128_load(init + 4);
    c10 = wasm_v128_load(init + init_ld);
    c11 = wasm_v128_load(init + init_ld + 4);
    c20 = wasm_v128_load(init + 2 * init_ld);
    c21 = wasm_v128_load(init + 2 * init_ld + 4);
    c30 = wasm_v128_load(init + 3 * init_ld);
    c31 = wasm_v128_load(init + 3 * init_ld + 4);
  }
#pragma clang loop unroll(disable)
  for (int p = 0; p < k; p++) {
    const v128_t vb0 = wasm_v128_load(bp);
    const v128_t vb1 = wasm_v128_load(bp + 4);
    bp += b_step;
    v128_t av = wasm_v128_load32_splat(a0p);
    c00 = MADD(av, vb0, c00);
    c01 = MADD(av, vb1, c01);
    av = wasm_v128_load32_splat(a1p);
    c10 = MADD(av, vb0, c10);
    c11 = MADD(av, vb1, c11);
    av = wasm_v128_load32_splat(a2p);
    c20 = MADD(av, vb0, c20);
    c21 = MADD(av, vb1, c21);
    av = wasm_v128_load32_splat(a3p);
    c30 = MADD(av, vb0, c30);
    c31 = MADD(av, vb1, c31);
    a0p += a_cs;
    a1p += a_cs;
    a2p += a_cs;
    a3p += a_cs;
  }
  float *out = columns == NR ? c : edge;
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
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < columns; j++) c[r * ldc + j] = edge[r * NR + j];
}

__attribute__((noinline)) static void tile(const float *a, int a_rs, int a_cs, const float *bp, int b_step, int k, float *c, int ldc, int columns, float *edge) {
  tile_from(a, a_rs, a_cs, bp, b_step, k, c, ldc, columns, edge, 0, 0);
}

// A full panel's tile (8 columns) whose sums start from `init` (not null; see tile_from). A bias
// added this way costs nothing: added by a pass over each tile just stored, it took 10-13% of a
// product of k = 256 (GPT-2's c_attn, c_fc: 84-88% of a 1024² product's rate, 95-103% this way),
// the pass's loads waiting for the stores' cache lines.
__attribute__((noinline)) static void tile_init(const float *a, int a_rs, int a_cs, const float *bp, int b_step, int k, float *c, int ldc, const float *init, int init_ld) {
  tile_from(a, a_rs, a_cs, bp, b_step, k, c, ldc, NR, 0, init, init_ld);
}

#ifdef LORA_FMA
// With fused multiply-adds a step of the tile needs no register for a product, so a 6×8 tile fits
// V8's 15 vector registers (12 accumulators, B's two vectors, one splat): each value of B loaded
// serves 6 rows instead of 4. Hand-written in WebAssembly text and timed on one core with its
// operands in L1 (medians of 5): 4×8 multiply-add 46.2, 6×8 51.5 GFLOP/s (6×8 with a separate
// multiply and add spills: 24.1), so the plain build keeps 4 rows. Used for full panels of the
// dense products (multiply); the triangular and copied-A paths keep the 4-row strips they are
// laid out for. Each output is the same sum in the same order whichever tile computes it.
#define MR6 6
// Keeps each row's splat load after the previous row's multiply-adds: clang would otherwise load
// all six splats first, and V8 would spill accumulators for the 18 live values (half the speed).
#define ORDER_BARRIER(x, y) __asm__ volatile("" : "+r"(x), "+r"(y)::"memory")
static inline __attribute__((always_inline)) void tile6_from(const float *a, int a_rs, int a_cs, const float *bp, int b_step, int k, float *c, int ldc, const float *init, int init_ld) {
  const float *a0p = a, *a1p = a + a_rs, *a2p = a + 2 * a_rs, *a3p = a + 3 * a_rs, *a4p = a + 4 * a_rs, *a5p = a + 5 * a_rs;
  v128_t c00 = wasm_f32x4_splat(0.0f), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  if (init != 0) {
    c00 = wasm_v128_load(init);
    c01 = wasm_v128_load(init + 4);
    c10 = wasm_v128_load(init + init_ld);
    c11 = wasm_v128_load(init + init_ld + 4);
    c20 = wasm_v128_load(init + 2 * init_ld);
    c21 = wasm_v128_load(init + 2 * init_ld + 4);
    c30 = wasm_v128_load(init + 3 * init_ld);
    c31 = wasm_v128_load(init + 3 * init_ld + 4);
    c40 = wasm_v128_load(init + 4 * init_ld);
    c41 = wasm_v128_load(init + 4 * init_ld + 4);
    c50 = wasm_v128_load(init + 5 * init_ld);
    c51 = wasm_v128_load(init + 5 * init_ld + 4);
  }
#pragma clang loop unroll(disable)
  for (int p = 0; p < k; p++) {
    const v128_t vb0 = wasm_v128_load(bp);
    const v128_t vb1 = wasm_v128_load(bp + 4);
    bp += b_step;
    v128_t av = wasm_v128_load32_splat(a0p);
    c00 = MADD(av, vb0, c00);
    c01 = MADD(av, vb1, c01);
    ORDER_BARRIER(c00, c01);
    av = wasm_v128_load32_splat(a1p);
    c10 = MADD(av, vb0, c10);
    c11 = MADD(av, vb1, c11);
    ORDER_BARRIER(c10, c11);
    av = wasm_v128_load32_splat(a2p);
    c20 = MADD(av, vb0, c20);
    c21 = MADD(av, vb1, c21);
    ORDER_BARRIER(c20, c21);
    av = wasm_v128_load32_splat(a3p);
    c30 = MADD(av, vb0, c30);
    c31 = MADD(av, vb1, c31);
    ORDER_BARRIER(c30, c31);
    av = wasm_v128_load32_splat(a4p);
    c40 = MADD(av, vb0, c40);
    c41 = MADD(av, vb1, c41);
    ORDER_BARRIER(c40, c41);
    av = wasm_v128_load32_splat(a5p);
    c50 = MADD(av, vb0, c50);
    c51 = MADD(av, vb1, c51);
    a0p += a_cs;
    a1p += a_cs;
    a2p += a_cs;
    a3p += a_cs;
    a4p += a_cs;
    a5p += a_cs;
  }
  wasm_v128_store(c, c00);
  wasm_v128_store(c + 4, c01);
  wasm_v128_store(c + ldc, c10);
  wasm_v128_store(c + ldc + 4, c11);
  wasm_v128_store(c + 2 * ldc, c20);
  wasm_v128_store(c + 2 * ldc + 4, c21);
  wasm_v128_store(c + 3 * ldc, c30);
  wasm_v128_store(c + 3 * ldc + 4, c31);
  wasm_v128_store(c + 4 * ldc, c40);
  wasm_v128_store(c + 4 * ldc + 4, c41);
  wasm_v128_store(c + 5 * ldc, c50);
  wasm_v128_store(c + 5 * ldc + 4, c51);
}

// 6-row strips for `rows` rows, the rest taking 4-row tiles and then 1-row ones: as many as leave
// the fewest 1-row tiles (128 rows: 20 strips and two 4-row tiles, not 21 strips and two 1-row
// tiles, which cost about as much as the strips gained).
static inline int strips6_of(int rows) {
  const int n = rows / MR6;
  return n > 0 && (rows - n * MR6) % MR > (rows - (n - 1) * MR6) % MR ? n - 1 : n;
}

__attribute__((noinline)) static void tile6(const float *a, int a_rs, int a_cs, const float *bp, int b_step, int k, float *c, int ldc) {
  tile6_from(a, a_rs, a_cs, bp, b_step, k, c, ldc, 0, 0);
}

__attribute__((noinline)) static void tile6_init(const float *a, int a_rs, int a_cs, const float *bp, int b_step, int k, float *c, int ldc, const float *init, int init_ld) {
  tile6_from(a, a_rs, a_cs, bp, b_step, k, c, ldc, init, init_ld);
}
#endif

// One row of C's 8 columns, for the rows a 4-row tile would repeat (a product of fewer than 4 rows,
// as in token-by-token decoding, or the last rows of a matrix): the same sums, in the same order,
// as the tile's, a quarter of its work. A partial panel (columns < 8) goes through `edge`.
__attribute__((noinline)) static void row_tile(const float *a, int a_cs, const float *bp, int b_step, int k, float *c, int columns, float *edge) {
  v128_t c0 = wasm_f32x4_splat(0.0f), c1 = c0;
  for (int p = 0; p < k; p++) {
    const v128_t a0 = wasm_v128_load32_splat(a + p * a_cs);
    c0 = MADD(a0, wasm_v128_load(bp + p * b_step), c0);
    c1 = MADD(a0, wasm_v128_load(bp + p * b_step + 4), c1);
  }
  float *out = columns == NR ? c : edge;
  wasm_v128_store(out, c0);
  wasm_v128_store(out + 4, c1);
  if (out != c)
    for (int j = 0; j < columns; j++) c[j] = edge[j];
}

// C's `rows` rows (ldc apart) of `columns` values += init's (row r at init + r·init_ld: a bias row
// for init_ld 0), for the tiles tile_init does not take (a partial panel or a row tile).
__attribute__((noinline)) static void add_init(float *c, int ldc, int rows, int columns, const float *init, int init_ld) {
  for (int r = 0; r < rows; r++) {
    float *cr = c + r * ldc;
    const float *ir = init + r * init_ld;
    int j = 0;
    for (; j + 4 <= columns; j += 4) wasm_v128_store(cr + j, wasm_f32x4_add(wasm_v128_load(cr + j), wasm_v128_load(ir + j)));
    for (; j < columns; j++) cr[j] = cr[j] + ir[j];
  }
}

// Rows of C for a product of fewer than 4 rows whose B has contiguous rows (token-by-token decoding:
// a row per sequence times a weight, which is all the product reads): B is streamed row by row as
// it is stored, four rows at a time, and each row of C is accumulated where it lies (it stays in
// cache). The tiles would read B down its columns, 32 bytes a row, which the memory serves far
// slower. The sums are the tiles', in the same order (0 + a₀b₀ + a₁b₁ + …, one rounding each);
// `init` (see multiply) is added once they are summed, as for row tiles.
__attribute__((noinline)) static void few_rows(const float *a, int a_rs, int a_cs, const float *b, int b_rs, int k, int columns, float *c, int ldc, int rows, const float *init, int init_ld) {
  for (int r = 0; r < rows; r++) {
    float *cr = c + r * ldc;
    int j = 0;
    for (; j + 4 <= columns; j += 4) wasm_v128_store(cr + j, wasm_f32x4_splat(0.0f));
    for (; j < columns; j++) cr[j] = 0.0f;
  }
  int p = 0;
  for (; p + 4 <= k; p += 4) {
    const float *b0 = b + p * b_rs, *b1 = b0 + b_rs, *b2 = b1 + b_rs, *b3 = b2 + b_rs;
    for (int r = 0; r < rows; r++) {
      const float *ar = a + r * a_rs + p * a_cs;
      const float s0 = ar[0], s1 = ar[a_cs], s2 = ar[2 * a_cs], s3 = ar[3 * a_cs];
      const v128_t a0 = wasm_f32x4_splat(s0), a1 = wasm_f32x4_splat(s1), a2 = wasm_f32x4_splat(s2), a3 = wasm_f32x4_splat(s3);
      float *cr = c + r * ldc;
      int j = 0;
      for (; j + 4 <= columns; j += 4) {
        v128_t acc = wasm_v128_load(cr + j);
        acc = MADD(a0, wasm_v128_load(b0 + j), acc);
        acc = MADD(a1, wasm_v128_load(b1 + j), acc);
        acc = MADD(a2, wasm_v128_load(b2 + j), acc);
        acc = MADD(a3, wasm_v128_load(b3 + j), acc);
        wasm_v128_store(cr + j, acc);
      }
      for (; j < columns; j++) cr[j] = (((cr[j] + s0 * b0[j]) + s1 * b1[j]) + s2 * b2[j]) + s3 * b3[j];
    }
  }
  for (; p < k; p++) {
    const float *bp = b + p * b_rs;
    for (int r = 0; r < rows; r++) {
      const float s0 = a[r * a_rs + p * a_cs];
      const v128_t a0 = wasm_f32x4_splat(s0);
      float *cr = c + r * ldc;
      int j = 0;
      for (; j + 4 <= columns; j += 4) wasm_v128_store(cr + j, MADD(a0, wasm_v128_load(bp + j), wasm_v128_load(cr + j)));
      for (; j < columns; j++) cr[j] = cr[j] + s0 * bp[j];
    }
  }
  if (init != 0) add_init(c, ldc, rows, columns, init, init_ld);
}

// With at most this many terms per output (LoRA's up-projections, k = r), the packed panels of B
// are small enough to stay in cache for a whole row of tiles: C is then written row by row, each
// of its cache lines once, instead of panel by panel down its columns (which, at 8 columns a panel,
// wrote each line twice, far apart, and made the stores the cost of the product).
#define SMALL_K 16
// With at most this many rows of op(A) (two row tiles: LoRA's gradient of A, rᵀ·x), each value of
// B is used once or twice, so packing B costs as much as the product: full panels of a B with
// contiguous rows (column stride 1) are read in place; only a partial last panel is packed.
#define IN_PLACE_ROWS 8

// A transposed op(A) (its rows are A's columns: a_rs = 1) whose rows lie at least this many floats
// apart (full fine-tuning's weight gradient xᵀ·dy) is copied into scratch, 16 rows at a time,
// before the tiles read it. Read in place, a 4-row tile takes 16 bytes every a_cs floats; at 1024
// floats (4 KB) apart every one of its k loads falls in the same L1 set, so the next tile, which
// needs the rest of those cache lines, finds them evicted (measured on one core, m 1024, k 1024,
// n 256: 21.5-24.4 GFLOP/s in place, 36-40 copied). Attention's transposed operands (128 apart)
// are read in place as before, and so is an A whose values are each used once
// (PACK_A_MIN_COLUMNS).
#define PACK_A_MIN_STRIDE 256
#define PACK_A_MIN_K 64
#define A_BLOCK_ROWS 16
// With one panel of B, each value of A is read once either way: copying it only adds a pass (LoRA's
// dB = dyᵀ·(x·Aᵀ), n = r = 8, measured 20% slower copied).
#define PACK_A_MIN_COLUMNS 16

static inline int min_int(int x, int y) { return x < y ? x : y; }

// Whether op(A) is copied into scratch (A_BLOCK_ROWS·k floats after the 32 of `edge`), for a
// product of n columns.
static inline int packs_a(int k, int n, int a_rs, int a_cs) { return a_rs == 1 && a_cs >= PACK_A_MIN_STRIDE && k >= PACK_A_MIN_K && n >= PACK_A_MIN_COLUMNS; }

// Rows [0, rows) (rows ≤ A_BLOCK_ROWS) of a transposed op(A) (`a` at its first row, a_rs = 1) as
// 4-row strips: strip t holds rows 4t..4t+3, value (r, p) at out[t·4k + 4p + r − 4t], so a tile
// reads it with a_rs = 1, a_cs = 4. A partial last strip is zero-filled.
static void pack_a(const float *a, int a_cs, int k, int rows, float *out) {
  const int full = rows / MR;
  for (int p = 0; p < k; p++) {
    const float *row = a + p * a_cs;
    for (int t = 0; t < full; t++) wasm_v128_store(out + t * MR * k + p * MR, wasm_v128_load(row + t * MR));
    if (full * MR < rows) {
      float *strip = out + full * MR * k + p * MR;
      for (int r = 0; r < MR; r++) strip[r] = full * MR + r < rows ? row[full * MR + r] : 0.0f;
    }
  }
}

// Whether a product of `rows` rows streams B's rows (few_rows) instead of multiplying tiles.
static inline int streams_b(int rows, int b_cs) { return b_cs == 1 && rows < MR; }

// Panels of op(B) read in place for a product of `rows` rows (0: all packed): all of them when B
// is streamed, else the full ones when the rows are few.
static inline int panels_in_place(int rows, int columns, int b_cs) {
  if (streams_b(rows, b_cs)) return (columns + NR - 1) / NR;
  return b_cs == 1 && rows <= IN_PLACE_ROWS ? columns / NR : 0;
}

// Rows [0, rows) of op(A) (`a` at its first row) times `columns` columns of op(B): the first
// `in_place` panels read from `b` (the block's first column, rows `b_rs` apart), the others from
// `packed` (as pack_b wrote them, from panel `in_place` on). Element (r, j) goes to target[r·ld + j].
// With `init` (not null), element (r, j) is init[r·init_ld + j] plus the product's: a bias row
// (init_ld 0) or a matrix (a LoRA layer's base output); full tiles start their sums from it
// (tile_init), the others add it once summed (add_init).
__attribute__((noinline)) static void multiply(const float *a, int a_rs, int a_cs, const float *b, int b_rs, int b_cs, int in_place, const float *packed, int k, int rows, int columns, float *target,
                     int ld, float *edge, float *packed_a, const float *init, int init_ld) {
  if (streams_b(rows, b_cs)) {
    few_rows(a, a_rs, a_cs, b, b_rs, k, columns, target, ld, rows, init, init_ld);
    return;
  }
  const int panels = (columns + NR - 1) / NR;
  // Panel jp's first value and the distance between its rows.
#define PANEL(jp) ((jp) < in_place ? b + (jp) * NR : packed + ((jp) - in_place) * NR * k)
#define PANEL_STEP(jp) ((jp) < in_place ? b_rs : NR)
#define PANEL_COLUMNS(jp) (columns - (jp) * NR < NR ? columns - (jp) * NR : NR)
// Rows i0..i0+3 of C in panel jp (fewer at the matrix's edge, a 1×8 tile each), from A's row i0 at
// `ai`, its rows `ars` apart and values `acs` apart: A in place, or a strip of its copy.
#define PANEL_TILE_FROM(jp, i0, ai, ars, acs)                                                                                                                              \
  do {                                                                                                                                                                       \
    float *const c_tile = target + (i0) * ld + (jp) * NR;                                                                                                                   \
    const float *const init_tile = init != 0 ? init + (i0) * init_ld + (jp) * NR : 0;                                                                                       \
    if (rows - (i0) >= MR && init != 0 && PANEL_COLUMNS(jp) == NR)                                                                                                          \
      tile_init(ai, ars, acs, PANEL(jp), PANEL_STEP(jp), k, c_tile, ld, init_tile, init_ld);                                                                               \
    else {                                                                                                                                                                   \
      if (rows - (i0) >= MR)                                                                                                                                                 \
        tile(ai, ars, acs, PANEL(jp), PANEL_STEP(jp), k, c_tile, ld, PANEL_COLUMNS(jp), edge);                                                                               \
      else                                                                                                                                                                   \
        for (int r = (i0); r < rows; r++) row_tile((ai) + (r - (i0)) * (ars), acs, PANEL(jp), PANEL_STEP(jp), k, c_tile + (r - (i0)) * ld, PANEL_COLUMNS(jp), edge);         \
      if (init != 0) add_init(c_tile, ld, min_int(MR, rows - (i0)), PANEL_COLUMNS(jp), init_tile, init_ld);                                                                  \
    }                                                                                                                                                                        \
  } while (0)
#define PANEL_TILE(jp, i0) PANEL_TILE_FROM(jp, i0, a + (i0) * a_rs, a_rs, a_cs)
  if (packed_a != 0 && rows >= MR) {
    // Block by block of A_BLOCK_ROWS rows, copied (see PACK_A_MIN_STRIDE); each output is the same
    // sum, in the same order, as read in place.
    for (int r0 = 0; r0 < rows; r0 += A_BLOCK_ROWS) {
      const int block_rows = min_int(A_BLOCK_ROWS, rows - r0);
      pack_a(a + r0, a_cs, k, block_rows, packed_a);
      for (int jp = 0; jp < panels; jp++)
        for (int i0 = r0; i0 < r0 + block_rows; i0 += MR) {
          const float *strip = packed_a + (i0 - r0) * k;
          PANEL_TILE_FROM(jp, i0, strip, 1, MR);
        }
    }
  } else if (k <= SMALL_K) {
    for (int i0 = 0; i0 < rows; i0 += MR)
      for (int jp = 0; jp < panels; jp++) PANEL_TILE(jp, i0);
  } else {
    for (int jp = 0; jp < panels; jp++) {
      int i0 = 0;
#ifdef LORA_FMA
      // Full panels: 6-row tiles (see tile6_from, strips6_of), then the 4-row ones.
      if (PANEL_COLUMNS(jp) == NR)
        for (int strips = strips6_of(rows); strips > 0; strips--, i0 += MR6) {
          float *const c_tile = target + i0 * ld + jp * NR;
          if (init != 0) tile6_init(a + i0 * a_rs, a_rs, a_cs, PANEL(jp), PANEL_STEP(jp), k, c_tile, ld, init + i0 * init_ld + jp * NR, init_ld);
          else tile6(a + i0 * a_rs, a_rs, a_cs, PANEL(jp), PANEL_STEP(jp), k, c_tile, ld);
        }
#endif
      for (; i0 < rows; i0 += MR) PANEL_TILE(jp, i0);
    }
  }
#undef PANEL_TILE
#undef PANEL_TILE_FROM
#undef PANEL_COLUMNS
#undef PANEL_STEP
#undef PANEL
}

// Attention's causal products, of which only a triangle is needed (square T×T matrices of scores or
// probabilities; query i sees keys ≤ i):
//   TRI_LOWER_OUTPUT  C = tril(op(A)·op(B)), C square: the scores q·kᵀ and the gradient's dO·vᵀ.
//                     Tiles wholly right of the diagonal are not multiplied; those values are 0.
//   TRI_LOWER_A       C = tril(op(A))·op(B), op(A) square: p·v and dS·k (row r sums terms p ≤ r).
//   TRI_UPPER_A       C = triu(op(A))·op(B): with op(A) = Aᵀ, tril(A)ᵀ·B, that is pᵀ·dO and dSᵀ·q
//                     (row r sums terms p ≥ r).
//   TRI_LOWER_A_ZEROED  TRI_LOWER_A for an op(A) whose 4×4 blocks on the diagonal hold zeros above it
//                     (causal-attention.h's P and dS, whose rows it pads with zeros to a multiple of
//                     4): a full tile takes all four rows' terms, those zeros included, in one run.
//   TRI_LOWER_SCORES  TRI_LOWER_OUTPUT for a C of which nothing right of each row's diagonal tile
//                     is read afterwards (causal-attention.h's scratch S and dP): those tiles are
//                     not written, nor the values above the diagonal in it zeroed.
// Each about half the work of the full product. In the A modes but TRI_LOWER_A_ZEROED no value of
// op(A) outside the triangle is read (whatever it is, even NaN, it never enters): see
// multiply_triangular.
#define TRI_NONE 0
#define TRI_LOWER_OUTPUT 1
#define TRI_LOWER_A 2
#define TRI_UPPER_A 3
#define TRI_LOWER_A_ZEROED 4
#define TRI_LOWER_SCORES 5

static inline int max_int(int x, int y) { return x > y ? x : y; }

// Floats of scratch after `edge` for a copy of op(A) (pack_a's block).
static inline int a_copy_floats(int tri, int k, int n, int a_rs, int a_cs) { return tri == TRI_NONE && packs_a(k, n, a_rs, a_cs) ? A_BLOCK_ROWS * k : 0; }

// The terms p of the 4×4 block on the diagonal that only some rows of a full tile keep (rows
// g..g+3 of op(A) from `a`, row r keeping p ≤ g + r for TRI_LOWER_A, p ≥ g + r for TRI_UPPER_A),
// times the packed panel `bp` (k rows of 8), added to the tile's `cols` columns of C at `c`. Each
// row's sum goes on from the value the tile stored, term after term: for TRI_LOWER_A the same sum,
// in the same order, as a tile over terms [0, g + r] (TRI_LOWER_A_ZEROED's, whose extra terms add
// exact zeros), so causal attention's one kernel gives the separate kernels' values.
__attribute__((noinline)) static void add_diagonal_terms(int tri, const float *a, int a_rs, int a_cs, const float *bp, int g, int k, float *c, int ld, int cols, float *edge) {
#pragma clang loop unroll(disable)
  for (int r = 0; r < MR; r++) {
    const int from = tri == TRI_LOWER_A ? g + 1 : g + r;
    const int to = min_int(k, tri == TRI_LOWER_A ? g + r + 1 : g + MR - 1);
    if (from >= to) continue;
    float *cr = c + r * ld;
    // A partial panel's row goes through `edge` (its 8 floats; the lanes past `cols` are dropped).
    float *row = cols == NR ? cr : edge;
#pragma clang loop vectorize(disable) unroll(disable)
    for (int j = 0; row == edge && j < NR; j++) edge[j] = j < cols ? cr[j] : 0.0f;
    v128_t c0 = wasm_v128_load(row), c1 = wasm_v128_load(row + 4);
#pragma clang loop unroll(disable)
    for (int p = from; p < to; p++) {
      const v128_t s = wasm_v128_load32_splat(a + r * a_rs + p * a_cs);
      c0 = MADD(s, wasm_v128_load(bp + p * NR), c0);
      c1 = MADD(s, wasm_v128_load(bp + p * NR + 4), c1);
    }
    wasm_v128_store(row, c0);
    wasm_v128_store(row + 4, c1);
#pragma clang loop vectorize(disable) unroll(disable)
    for (int j = 0; row == edge && j < cols; j++) cr[j] = edge[j];
  }
}

// Rows [0, rows) of a triangular product's C, which are rows first_row.. of the matrix, in its
// columns first_column.. (`columns` of them): `a` at the chunk's first row of op(A), B's panels all
// packed in `packed` (k rows of 8 each), element (r, j) to target[r·ld + j]. In the two A modes a
// full tile multiplies op(A) in place over the terms all four of its rows keep, then adds those of
// the diagonal block that only some keep; a row of a partial tile takes exactly its own terms.
// The panels (of `panels`, from column first_column) that rows g..g+rows−1 of a TRI_LOWER_SCORES
// product compute: those holding a column < g + rows, the diagonal's included.
static inline int panels_to_diagonal(int panels, int g, int rows, int first_column) { return min_int(panels, max_int(0, g + rows - first_column + NR - 1) / NR); }

__attribute__((noinline)) static void multiply_triangular(int tri, const float *a, int a_rs, int a_cs, const float *packed, int k, int rows, int columns, int first_row,
                                                          int first_column, float *target, int ld, float *edge) {
  const int panels = (columns + NR - 1) / NR;
#ifdef LORA_FMA
  int strips6 = tri == TRI_LOWER_SCORES || tri == TRI_LOWER_A_ZEROED ? strips6_of(rows) : 0;
#endif
  for (int i0 = 0; i0 < rows; i0 += MR) {
#ifdef LORA_FMA
    // Attention's forms take 6-row strips first (see tile6_from, strips6_of): their scratch
    // rows hold zeros up to 8 terms past the diagonal (causal-attention.h), which a 6-row strip's
    // terms [0, g + 6) need in TRI_LOWER_A_ZEROED; in TRI_LOWER_SCORES the strip's extra values
    // right of the diagonal are never read. Full panels only (a partial one takes 4 + 2 rows).
    for (; strips6 > 0; strips6--, i0 += MR6) {
      const int g = first_row + i0;
      const int last = tri == TRI_LOWER_SCORES ? panels_to_diagonal(panels, g, MR6, first_column) : panels;
      const int terms = tri == TRI_LOWER_SCORES ? k : min_int(k, g + MR6);
      for (int jp = 0; jp < last; jp++) {
        const int cols = min_int(NR, columns - jp * NR);
        const float *ai = a + i0 * a_rs, *bp = packed + jp * NR * k;
        float *cj = target + i0 * ld + jp * NR;
        if (cols == NR) {
          tile6(ai, a_rs, a_cs, bp, NR, terms, cj, ld);
          continue;
        }
        tile(ai, a_rs, a_cs, bp, NR, terms, cj, ld, cols, edge);
        for (int r = MR; r < MR6; r++) row_tile(ai + r * a_rs, a_cs, bp, NR, terms, cj + r * ld, cols, edge);
      }
    }
    if (i0 >= rows) break;
#endif
    const int tile_rows = min_int(MR, rows - i0);
    const int g = first_row + i0;
    const float *ai = a + i0 * a_rs;
    float *ci = target + i0 * ld;
    if (tri == TRI_LOWER_OUTPUT || tri == TRI_LOWER_SCORES) {
      // TRI_LOWER_SCORES stops at the diagonal tile: the panels of columns < g + tile_rows.
      const int last = tri == TRI_LOWER_SCORES ? panels_to_diagonal(panels, g, tile_rows, first_column) : panels;
      for (int jp = 0; jp < last; jp++) {
        const int j0 = first_column + jp * NR, cols = min_int(NR, columns - jp * NR);
        float *cj = ci + jp * NR;
        const float *bp = packed + jp * NR * k;
        if (j0 >= g + tile_rows && cols == NR) {
          // Wholly right of the diagonal.
#pragma clang loop unroll(disable)
          for (int r = 0; r < tile_rows; r++) {
            wasm_v128_store(cj + r * ld, wasm_f32x4_splat(0.0f));
            wasm_v128_store(cj + r * ld + 4, wasm_f32x4_splat(0.0f));
          }
          continue;
        }
        if (j0 < g + tile_rows) {
          if (tile_rows == MR)
            tile(ai, a_rs, a_cs, bp, NR, k, cj, ld, cols, edge);
          else
            for (int r = 0; r < tile_rows; r++) row_tile(ai + r * a_rs, a_cs, bp, NR, k, cj + r * ld, cols, edge);
        }
        if (tri == TRI_LOWER_SCORES) continue;
        // Scalar loops: clang's vectorized copies of these short loops would double this function.
#pragma clang loop vectorize(disable) unroll(disable)
        for (int r = 0; r < tile_rows; r++)
#pragma clang loop vectorize(disable) unroll(disable)
          for (int j = max_int(0, g + r + 1 - j0); j < cols; j++) cj[r * ld + j] = 0.0f;
      }
      continue;
    }
    for (int jp = 0; jp < panels; jp++) {
      const int cols = min_int(NR, columns - jp * NR);
      const float *bp = packed + jp * NR * k;
      float *cj = ci + jp * NR;
      if (tile_rows == MR && tri == TRI_LOWER_A_ZEROED) {
        // Every row's terms and the zeros above the diagonal: [0, g + 4).
        tile(ai, a_rs, a_cs, bp, NR, min_int(k, g + MR), cj, ld, cols, edge);
      } else if (tile_rows == MR) {
        // Terms [q0, q1): kept by all four rows.
        const int q0 = tri == TRI_LOWER_A ? 0 : min_int(k, g + MR - 1);
        const int q1 = tri == TRI_LOWER_A ? min_int(k, g + 1) : k;
        tile(ai + q0 * a_cs, a_rs, a_cs, bp + q0 * NR, NR, q1 - q0, cj, ld, cols, edge);
        add_diagonal_terms(tri, ai, a_rs, a_cs, bp, g, k, cj, ld, cols, edge);
      } else {
        for (int r = 0; r < tile_rows; r++) {
          const int q0 = tri == TRI_UPPER_A ? min_int(k, g + r) : 0;
          const int q1 = tri == TRI_UPPER_A ? k : min_int(k, g + r + 1);
          row_tile(ai + r * a_rs + q0 * a_cs, a_cs, bp + q0 * NR, NR, q1 - q0, cj + r * ld, cols, edge);
        }
      }
    }
  }
}

// C (row-major, [batch, m, n], contiguous) = op(A) · op(B) (+ `bias`, n values added to every row
// when not null) for each of `batch` matrices, or a triangular form of it (`tri`, see
// TRI_LOWER_OUTPUT; no bias). `scratch` holds ceil(n/8)·8·k + 32 floats, and a_copy_floats more. A
// batch stride of 0 broadcasts an operand.
__attribute__((export_name("batch_matmul"))) void batch_matmul(int batch, int m, int k, int n, const float *a, int a_bs, int a_rs, int a_cs, const float *b,
                                                                 int b_bs, int b_rs, int b_cs, float *c, float *scratch, int tri, const float *bias) {
  const int b_panels = (n + NR - 1) / NR;
  float *packed_b = scratch;
  float *edge = packed_b + b_panels * NR * k;
  const int in_place = tri != TRI_NONE ? 0 : panels_in_place(m, n, b_cs);
  for (int i = 0; i < batch; i++) {
    const float *bi = b + i * b_bs;
    // A broadcast B is packed once.
    if (i == 0 || b_bs != 0) pack_b(bi + in_place * NR * b_cs, k, n - in_place * NR, b_rs, b_cs, packed_b);
    if (tri != TRI_NONE)
      multiply_triangular(tri, a + i * a_bs, a_rs, a_cs, packed_b, k, m, n, 0, 0, c + i * m * n, n, edge);
    else
      multiply(a + i * a_bs, a_rs, a_cs, bi, b_rs, b_cs, in_place, packed_b, k, m, n, c + i * m * n, n, edge, packs_a(k, n, a_rs, a_cs) ? edge + 32 : 0, bias, 0);
  }
}

#include "low-rank-train.h"
#include "causal-attention.h"
#include "gelu-tanh.h"
#include "gelu-erf.h"
#include "silu.h"

#define GELU_FORWARD 5
#define GELU_BACKWARD 6
#define GELU_ERF_FORWARD 7
#define GELU_ERF_BACKWARD 8
#define SILU_FORWARD 9
#define SILU_BACKWARD 10

// A fused activation's pass (gelu_new, the exact gelu or SiLU, either way): chunks of values, the
// helper's result at its buffer's start.
static inline int is_activation(int kind) { return kind >= GELU_FORWARD && kind <= SILU_BACKWARD; }

/// GPT-2's gelu_new on the calling thread: y = gelu_new(x) for `size` values.
__attribute__((export_name("gelu_tanh"))) void gelu_tanh(int size, const float *x, float *y) { gelu_values(size, x, y); }

/// Its gradient on the calling thread: dx = dy·gelu_new′(x).
__attribute__((export_name("gelu_tanh_grad"))) void gelu_tanh_grad(int size, const float *dy, const float *x, float *dx) { gelu_gradients(size, dy, x, dx); }

/// BERT's exact gelu on the calling thread: y = x·Φ(x) for `size` values.
__attribute__((export_name("gelu_erf"))) void gelu_erf_export(int size, const float *x, float *y) { gelu_erf_values(size, x, y); }

/// Its gradient on the calling thread: dx = dy·(Φ(x) + x·φ(x)).
__attribute__((export_name("gelu_erf_grad"))) void gelu_erf_grad(int size, const float *dy, const float *x, float *dx) { gelu_erf_gradients(size, dy, x, dx); }

/// SiLU on the calling thread: y = x·σ(x) for `size` values.
__attribute__((export_name("silu"))) void silu_export(int size, const float *x, float *y) { silu_values(size, x, y); }

/// Its gradient on the calling thread: dx = dy·σ(x)·(1 + x·(1 − σ(x))).
__attribute__((export_name("silu_grad"))) void silu_grad(int size, const float *dy, const float *x, float *dx) { silu_gradients(size, dy, x, dx); }

#ifdef __wasm_atomics__
// Two threads (shared-memory build only).
//
// A product is cut into chunks: one matrix of the stack, times a group of B's 8-column panels,
// times a block of A's rows (the caller picks the group and block sizes; a stack of attention
// matrices is usually a matrix or half of one per chunk); a fused LoRA pass (low-rank-train.h) is
// cut into blocks of rows, each chunk one block. The calling thread and one helper thread
// claim chunks through one 64-bit word holding the call's generation and the unclaimed chunks'
// range, so a claim is one compare-and-swap that also checks the generation: a helper that wakes
// late can only fail its swap, never claim a chunk of the next call. The caller claims from the
// front of the range and the helper from the back, so consecutive calls cut by rows in the same
// order (a LoRA layer's blocks, then attention's sequences, then the next layer's blocks) tend to
// leave rows with the thread whose cache holds them; from one end, each call's rows went to
// whichever thread came first. Alternating in one process: attention on the rows of the call
// before 2-6% faster, LoRA steps 0-5% (4 of 5 runs faster).
//
// The caller never waits for the helper: not to start, and not to finish a chunk it has claimed.
// Once no chunk is left to claim, the caller takes back every chunk the helper has not finished
// and computes it itself. So that a helper descheduled mid-chunk (another process holds the second
// core) can never write into a finished call's output, the helper computes each chunk into a
// buffer of its own and copies it to the output only after one more compare-and-swap on the
// chunk's word: from "helper computing" to "helper copying". The caller's take-back is a swap on
// the same word, so exactly one of them wins; the caller waits only for a copy in progress (a few
// microseconds of stores). Each chunk's word holds the generation too, so a stale helper's swaps
// fail. The helper reads the call's arguments into a copy of its own and checks the chunk is still
// its own afterwards: arguments it has read are those of the call that chunk belongs to.
#include <stdint.h>

#define SEQ __ATOMIC_SEQ_CST
// The caller spins (about 20 µs) on a copy in progress before it sleeps in memory.atomic.wait.
#define SPINS 4000
// Chunks per call at most (the chunk words follow the control block).
#define MAX_CHUNKS 4096

// A chunk's word: generation << 2 | phase.
#define OPEN 0u    // not taken by the helper (claimed or not)
#define HELPER 1u  // the helper computes it into its own buffer
#define COPYING 2u // the helper copies its result to the output
#define DONE 3u    // in the output, or being computed there by the caller

struct args {
  // PRODUCT, a fused LoRA pass (LORA_FORWARD, LORA_BACKWARD: low-rank-train.h), whose chunks are
  // its blocks of `row_block` rows (`a` and `b` are then LoRA's A and B), causal attention
  // (ATTENTION_FORWARD, ATTENTION_BACKWARD: causal-attention.h), or a fused activation (gelu_new, the
  // exact gelu or SiLU: is_activation), whose chunks are ranges of `row_block` of its `rows` values
  // (x, dy in `third`, y).
  int32_t kind;
  // For a PRODUCT, TRI_NONE or a triangular form (see TRI_LOWER_OUTPUT), and the bias (n values, or null).
  int32_t tri;
  const float *bias;
  int32_t m, k, n, a_bs, a_rs, a_cs, b_bs, b_rs, b_cs;
  const float *a, *b;
  float *c;
  int32_t row_block, panel_group, row_groups, panel_groups;
  // The LoRA passes' other arguments (see lora_block; `bias` above is the base layer's there).
  int32_t rows, in, out, rank;
  float s;
  const float *x, *third;
  float *hs, *y, *parts;
  const float *w, *xa;
  float *dxa;
  int32_t w_in_out;
  // Causal attention's arguments (see attention_matrix), whose chunks are its matrices.
  int32_t t, d, heads, ld_in, ld_out;
  // Its dropout (see drop_rows): on where threshold > 0.
  uint32_t seed;
  int32_t threshold;
  float drop_scale;
  // Each sequence's length (right padding), or null; causal (1) or bidirectional (0).
  const int32_t *lengths;
  int32_t causal;
  const float *q, *kt, *v, *dout; // kt: the keys (k is the product's terms)
  float *stats, *o, *dk, *dv;
};
#define PRODUCT 0

struct control {
  // Generation (bits 32-63) | one past the last unclaimed chunk (bits 16-31) | the first unclaimed
  // chunk (bits 0-15): chunks [first, end) are unclaimed.
  uint64_t state;
  uint32_t stop;   // set by helper_stop: helper_loop returns
  uint32_t test_mode; // a test switch: 1, the helper claims nothing; 2, it stalls in each chunk it claims; 3, it dies copying
  uint32_t caller_waiting;
  uint32_t pad0[11];
  // Written by the helper (another cache line than the state the caller polls).
  uint32_t pad1;
  uint32_t helper_chunks;  // chunks the helper computed and copied, over all calls (a statistic)
  uint32_t helper_running; // helper_loop has started and not returned
  uint32_t helper_failed;  // set by the helper's host when helper_loop threw
  float *helper_scratch;   // the helper's own buffer: packed panels, then its chunk's result (see control_helper_scratch)
  uint32_t pad2[11];
  // Per thread: the generation, matrix (-1 for a broadcast B) and panel group its scratch holds packed.
  int32_t packed[2][4];
  struct args call;        // the current call's arguments, written before `state` publishes them
  struct args helper_args; // the helper's copy of them
};
// Bytes of the control block, then the chunk words (wasm-simd-matmul.ts's CONTROL_BYTES).
#define CONTROL_BYTES 576
_Static_assert(sizeof(struct control) <= CONTROL_BYTES, "wasm-simd-matmul.ts allocates CONTROL_BYTES for the control block, then the chunk words");
// wasm-simd-matmul.ts reads and writes these words by their byte offsets.
_Static_assert(__builtin_offsetof(struct control, test_mode) == 12, "TEST_MODE_OFFSET");
_Static_assert(__builtin_offsetof(struct control, helper_chunks) == 68, "HELPER_CHUNKS_OFFSET");
_Static_assert(__builtin_offsetof(struct control, helper_running) == 72, "HELPER_RUNNING_OFFSET");
_Static_assert(__builtin_offsetof(struct control, helper_failed) == 76, "HELPER_FAILED_OFFSET");

static inline uint32_t *chunk_words(struct control *ctl) { return (uint32_t *)((char *)ctl + CONTROL_BYTES); }

// Chunk `chunk` of the call described by `p` (matrix, panel group, row block), packing into
// `packed_b` (memo: what it holds). Its result goes to the output, or, when `out` is not null,
// to `out` as a [rows of the chunk, panel_group·8] matrix.
static void run_chunk(const struct args *p, int chunk, float *packed_b, int32_t *memo, uint32_t gen, float *out) {
  if (is_activation(p->kind)) {
    const int start = chunk * p->row_block, count = min_int(p->rows - start, p->row_block);
    float *to = out ? out : p->y + start;
    if (p->kind == GELU_FORWARD) gelu_values(count, p->x + start, to);
    else if (p->kind == GELU_BACKWARD) gelu_gradients(count, p->third + start, p->x + start, to);
    else if (p->kind == GELU_ERF_FORWARD) gelu_erf_values(count, p->x + start, to);
    else if (p->kind == GELU_ERF_BACKWARD) gelu_erf_gradients(count, p->third + start, p->x + start, to);
    else if (p->kind == SILU_FORWARD) silu_values(count, p->x + start, to);
    else silu_gradients(count, p->third + start, p->x + start, to);
    return;
  }
  if (p->kind == ATTENTION_FORWARD || p->kind == ATTENTION_BACKWARD) {
    attention_matrix(p->kind, p->t, p->d, p->heads, p->ld_in, p->ld_out, p->s, p->seed, p->threshold, p->drop_scale, p->lengths, p->causal, p->q, p->kt, p->v, p->dout, p->stats, p->o, p->dk, p->dv, chunk, packed_b, out);
    return;
  }
  if (p->kind != PRODUCT) {
    // A LoRA block: this thread packs the call's A and B once (its memo holds the generation).
    if (memo[0] != (int32_t)gen || memo[1] != -2) {
      lora_pack(p->kind, p->in, p->out, p->rank, p->row_block, p->a, p->b, p->w, p->w_in_out, packed_b);
      memo[0] = (int32_t)gen;
      memo[1] = -2;
    }
    lora_block(p->kind, p->rows, p->in, p->out, p->rank, p->row_block, p->s, p->x, p->a, p->b, p->third, p->hs, p->y, p->parts, chunk, packed_b, out, p->w, p->w_in_out, p->bias, p->xa,
               p->dxa);
    return;
  }
  const int k = p->k, m = p->m, n = p->n;
  const int rg = chunk % p->row_groups;
  const int pg = (chunk / p->row_groups) % p->panel_groups;
  const int i = chunk / p->row_groups / p->panel_groups;
  const int first_column = pg * p->panel_group * NR;
  const int columns = min_int(n - first_column, p->panel_group * NR);
  float *edge = packed_b + p->panel_group * NR * k;
  const int first_row = rg * p->row_block;
  const int rows = min_int(m, first_row + p->row_block) - first_row;
  const float *bi = p->b + i * p->b_bs + first_column * p->b_cs;
  const int in_place = p->tri != TRI_NONE ? 0 : panels_in_place(m, columns, p->b_cs);
  // Consecutive chunks differ in their row block first: the packed panels are reused.
  const int b_key = p->b_bs != 0 ? i : -1;
  if (memo[0] != (int32_t)gen || memo[1] != b_key || memo[2] != pg) {
    pack_b(bi + in_place * NR * p->b_cs, k, columns - in_place * NR, p->b_rs, p->b_cs, packed_b);
    memo[0] = (int32_t)gen;
    memo[1] = b_key;
    memo[2] = pg;
  }
  // Where element (r, j) of the chunk goes: row stride and the address of (first_row, first_column).
  const int ld = out ? p->panel_group * NR : n;
  float *target = out ? out : p->c + i * m * n + first_row * n + first_column;
  const float *ai = p->a + i * p->a_bs + first_row * p->a_rs;
  if (p->tri != TRI_NONE)
    multiply_triangular(p->tri, ai, p->a_rs, p->a_cs, packed_b, k, rows, columns, first_row, first_column, target, ld, edge);
  else
    multiply(ai, p->a_rs, p->a_cs, bi, p->b_rs, p->b_cs, in_place, packed_b, k, rows, columns, target, ld, edge, packs_a(k, n, p->a_rs, p->a_cs) ? edge + 32 : 0,
             p->bias != 0 ? p->bias + first_column : 0, 0);
}

// Copy the helper's result of `chunk` (see run_chunk) to the output.
static void copy_chunk(const struct args *p, int chunk, const float *from) {
  if (is_activation(p->kind)) {
    const int start = chunk * p->row_block;
    copy_floats(p->y + start, from, min_int(p->rows - start, p->row_block));
    return;
  }
  if (p->kind == ATTENTION_FORWARD || p->kind == ATTENTION_BACKWARD) {
    attention_copy_matrix(p->kind, p->t, p->d, p->heads, p->ld_in, p->ld_out, p->stats, p->o, p->dk, p->dv, chunk, from);
    return;
  }
  if (p->kind != PRODUCT) {
    lora_copy_block(p->kind, p->rows, p->in, p->out, p->rank, p->row_block, p->hs, p->y, p->parts, chunk, from, p->dxa);
    return;
  }
  const int m = p->m, n = p->n;
  const int rg = chunk % p->row_groups;
  const int pg = (chunk / p->row_groups) % p->panel_groups;
  const int i = chunk / p->row_groups / p->panel_groups;
  const int first_column = pg * p->panel_group * NR;
  const int columns = min_int(n - first_column, p->panel_group * NR);
  const int first_row = rg * p->row_block;
  const int rows = min_int(m, first_row + p->row_block) - first_row;
  float *to = p->c + i * m * n + first_row * n + first_column;
  for (int r = 0; r < rows; r++) {
    const float *source = from + r * p->panel_group * NR;
    float *row = to + r * n;
    int j = 0;
    for (; j + 4 <= columns; j += 4) wasm_v128_store(row + j, wasm_v128_load(source + j));
    for (; j < columns; j++) row[j] = source[j];
  }
}

// Claim an unclaimed chunk of generation `gen`, the first (`from_end` 0: the caller) or the last
// (1: the helper): its index, or -1 when none is left (or the call is over).
static int claim(struct control *ctl, uint32_t gen, int from_end) {
  for (;;) {
    const uint64_t s = __atomic_load_n(&ctl->state, SEQ);
    const uint32_t first = (uint32_t)s & 0xffff, end = ((uint32_t)s >> 16) & 0xffff;
    if ((uint32_t)(s >> 32) != gen || first >= end) return -1;
    const uint64_t claimed = from_end ? s - (1u << 16) : s + 1;
    if (__sync_val_compare_and_swap(&ctl->state, s, claimed) == s) return (int)(from_end ? end - 1 : first);
  }
}

// The generation word (the state's high half) is what the helper sleeps on.
static inline int *generation_word(struct control *ctl) { return (int *)&ctl->state + 1; }

/// Initialise a control block (CONTROL_BYTES, then MAX_CHUNKS chunk words) before its helper starts;
/// `helper_scratch` is the helper's own buffer (its size is the caller's to respect).
__attribute__((export_name("control_init"))) void control_init(struct control *ctl, float *helper_scratch) {
  uint32_t *words = (uint32_t *)ctl;
  for (int i = 0; i < CONTROL_BYTES / 4 + MAX_CHUNKS; i++) words[i] = 0;
  ctl->helper_scratch = helper_scratch;
}

// The generation of the call about to be published.
static inline uint32_t next_generation(struct control *ctl) { return (uint32_t)(__atomic_load_n(&ctl->state, SEQ) >> 32) + 1; }

// Run the `total` chunks of the call whose arguments are in ctl->call on this thread and the
// helper, and return once every chunk's result is in the output.
static void share_chunks(struct control *ctl, uint32_t gen, uint32_t total, float *scratch, int may_wait) {
  const struct args *p = &ctl->call;
  uint32_t *chunks = chunk_words(ctl);
  const uint32_t open = gen << 2 | OPEN, done = gen << 2 | DONE;
  for (uint32_t chunk = 0; chunk < total; chunk++) __atomic_store_n(&chunks[chunk], open, SEQ);
  // Publish: arguments and chunk words first, then the word that makes the chunks claimable; then
  // wake the helper.
  __atomic_store_n(&ctl->state, ((uint64_t)gen << 32) | (total << 16), SEQ);
  __builtin_wasm_memory_atomic_notify(generation_word(ctl), 1);
  for (int chunk; (chunk = claim(ctl, gen, 0)) >= 0;) {
    __atomic_store_n(&chunks[chunk], done, SEQ);
    run_chunk(p, chunk, scratch, ctl->packed[0], gen, 0);
  }
  // Every chunk is claimed: take back the helper's unfinished ones; wait only for copies.
  for (uint32_t chunk = 0; chunk < total; chunk++) {
    for (int spins = 0;; spins++) {
      const uint32_t word = __atomic_load_n(&chunks[chunk], SEQ);
      if (word == done) break;
      if (word != (gen << 2 | COPYING) || __atomic_load_n(&ctl->helper_failed, SEQ)) {
        // Not started, being computed into the helper's buffer, or stuck with a dead helper.
        if (__sync_val_compare_and_swap(&chunks[chunk], word, done) == word) {
          run_chunk(p, (int)chunk, scratch, ctl->packed[0], gen, 0);
          break;
        }
        continue;
      }
      if (!may_wait || spins < SPINS) continue;
      __atomic_store_n(&ctl->caller_waiting, 1, SEQ);
      // A 1 ms timeout: the helper's failure flag comes without a notify.
      if (__atomic_load_n(&chunks[chunk], SEQ) == word) __builtin_wasm_memory_atomic_wait32((int *)&chunks[chunk], (int)word, 1000000);
    }
  }
  __atomic_store_n(&ctl->caller_waiting, 0, SEQ);
}

// batch_matmul on two threads, chunked by `row_block` rows (a multiple of 4) and `panel_group`
// panels of 8 columns; the chunks (batch · row blocks · panel groups) must number at most
// MAX_CHUNKS. `scratch` holds panel_group·8·k + 32 floats (the calling thread's), and a_copy_floats
// more; the helper's buffer must hold that plus row_block·panel_group·8. `may_wait`:
// whether this thread may sleep in memory.atomic.wait (a browser's main thread may not: it spins
// instead).
__attribute__((export_name("batch_matmul_threaded"))) void batch_matmul_threaded(struct control *ctl, int batch, int m, int k, int n, const float *a, int a_bs, int a_rs,
                                                                                   int a_cs, const float *b, int b_bs, int b_rs, int b_cs, float *c, float *scratch,
                                                                                   int row_block, int panel_group, int may_wait, int tri, const float *bias) {
  const uint32_t gen = next_generation(ctl);
  struct args *p = &ctl->call;
  p->kind = PRODUCT;
  p->tri = tri;
  p->bias = bias;
  p->m = m;
  p->k = k;
  p->n = n;
  p->a = a;
  p->a_bs = a_bs;
  p->a_rs = a_rs;
  p->a_cs = a_cs;
  p->b = b;
  p->b_bs = b_bs;
  p->b_rs = b_rs;
  p->b_cs = b_cs;
  p->c = c;
  p->row_block = row_block;
  p->panel_group = panel_group;
  p->row_groups = (m + row_block - 1) / row_block;
  p->panel_groups = ((n + NR - 1) / NR + panel_group - 1) / panel_group;
  share_chunks(ctl, gen, (uint32_t)(batch * p->row_groups * p->panel_groups), scratch, may_wait);
}

// A fused LoRA pass (low-rank-train.h) on two threads: its blocks of `row_block` rows are the
// chunks (MAX_CHUNKS at most). `scratch` holds lora_scratch_floats(kind, …, w != 0, 0) floats, the
// helper's buffer lora_scratch_floats(kind, …, w != 0, 1).
static void lora_threaded(struct control *ctl, int kind, int rows, int in, int out, int rank, int row_block, float s, const float *x, const float *a, const float *b,
                          const float *third, float *hs, float *y, float *parts, float *scratch, int may_wait, const float *w, int w_in_out, const float *bias, const float *xa,
                          float *dxa) {
  const uint32_t gen = next_generation(ctl);
  struct args *p = &ctl->call;
  p->kind = kind;
  p->rows = rows;
  p->in = in;
  p->out = out;
  p->rank = rank;
  p->row_block = row_block;
  p->s = s;
  p->x = x;
  p->a = a;
  p->b = b;
  p->third = third;
  p->hs = hs;
  p->y = y;
  p->parts = parts;
  p->w = w;
  p->w_in_out = w_in_out;
  p->bias = bias;
  p->xa = xa;
  p->dxa = dxa;
  share_chunks(ctl, gen, (uint32_t)blocks_of(rows, row_block), scratch, may_wait);
}

/// lora_forward on two threads (see lora_threaded).
__attribute__((export_name("lora_forward_threaded"))) void lora_forward_threaded(struct control *ctl, int rows, int in, int out, int rank, int row_block, float s, const float *x,
                                                                                   const float *a, const float *b, const float *base, float *hs, float *y, float *scratch,
                                                                                   const float *w, int w_in_out, const float *bias, const float *xa, int may_wait) {
  lora_threaded(ctl, LORA_FORWARD, rows, in, out, rank, row_block, s, x, a, b, base, hs, y, 0, scratch, may_wait, w, w_in_out, bias, xa, 0);
}

/// lora_backward on two threads (see lora_threaded); the calling thread adds the blocks' parts.
__attribute__((export_name("lora_backward_threaded"))) void lora_backward_threaded(struct control *ctl, int rows, int in, int out, int rank, int row_block, float s,
                                                                                     const float *dy, const float *x, const float *a, const float *b, const float *hs, float *dx,
                                                                                     float *parts, float *da, float *db, float *scratch, const float *w, int w_in_out,
                                                                                     const float *xa, float *dxa, int may_wait) {
  lora_threaded(ctl, LORA_BACKWARD, rows, in, out, rank, row_block, s, x, a, b, dy, (float *)hs, dx, parts, scratch, may_wait, w, w_in_out, 0, xa, dxa);
  lora_sum_parts(blocks_of(rows, row_block), in, out, rank, parts, da, db);
}

// Causal attention (causal-attention.h) on two threads: a chunk per matrix (MAX_CHUNKS at most).
// `scratch` holds attention_scratch_floats(kind, t, d, 0) floats, the helper's buffer
// attention_scratch_floats(kind, t, d, 1).
static void attention_threaded(struct control *ctl, int kind, int matrices, int heads, int t, int d, int ld_in, int ld_out, float scale, unsigned seed, int threshold, float drop_scale,
                               const int *lengths, int causal, const float *q, const float *k, const float *v,
                               const float *dout, float *stats, float *o, float *dk, float *dv, float *scratch, int may_wait) {
  const uint32_t gen = next_generation(ctl);
  struct args *p = &ctl->call;
  p->kind = kind;
  p->t = t;
  p->d = d;
  p->heads = heads;
  p->ld_in = ld_in;
  p->ld_out = ld_out;
  p->s = scale;
  p->seed = seed;
  p->threshold = threshold;
  p->drop_scale = drop_scale;
  p->lengths = lengths;
  p->causal = causal;
  p->q = q;
  p->kt = k;
  p->v = v;
  p->dout = dout;
  p->stats = stats;
  p->o = o;
  p->dk = dk;
  p->dv = dv;
  share_chunks(ctl, gen, (uint32_t)matrices, scratch, may_wait);
}

/// attention_forward on two threads (see attention_threaded).
__attribute__((export_name("attention_forward_threaded"))) void attention_forward_threaded(struct control *ctl, int matrices, int heads, int t, int d, int ld_in, int ld_out, float scale,
                                                                                             unsigned seed, int threshold, float drop_scale, const int *lengths, int causal, const float *q,
                                                                                             const float *k, const float *v, float *o, float *stats, float *scratch, int may_wait) {
  attention_threaded(ctl, ATTENTION_FORWARD, matrices, heads, t, d, ld_in, ld_out, scale, seed, threshold, drop_scale, lengths, causal, q, k, v, 0, stats, o, 0, 0, scratch, may_wait);
}

/// attention_backward on two threads (see attention_threaded).
__attribute__((export_name("attention_backward_threaded"))) void attention_backward_threaded(struct control *ctl, int matrices, int heads, int t, int d, int ld_in, int ld_out,
                                                                                               float scale, unsigned seed, int threshold, float drop_scale, const int *lengths, int causal,
                                                                                               const float *dout, const float *q, const float *k, const float *v, const float *stats, float *dq,
                                                                                               float *dk, float *dv, float *scratch, int may_wait) {
  attention_threaded(ctl, ATTENTION_BACKWARD, matrices, heads, t, d, ld_in, ld_out, scale, seed, threshold, drop_scale, lengths, causal, q, k, v, dout, (float *)stats, dq, dk, dv, scratch, may_wait);
}

/// A fused activation's values (`backward` 0) or gradient (1) on two threads, in chunks of `chunk`
/// values (a multiple of 4; MAX_CHUNKS at most); the helper's buffer holds a chunk. `form`: 0
/// gelu_new (gelu_tanh, gelu_tanh_grad), 1 the exact gelu (gelu_erf, gelu_erf_grad), 2 SiLU (silu,
/// silu_grad).
__attribute__((export_name("activation_threaded"))) void activation_threaded(struct control *ctl, int backward, int size, const float *x, const float *dy, float *out, int chunk, int may_wait,
                                                                               int form) {
  const uint32_t gen = next_generation(ctl);
  struct args *p = &ctl->call;
  p->kind = GELU_FORWARD + 2 * form + (backward ? 1 : 0);
  p->rows = size;
  p->row_block = chunk;
  p->x = x;
  p->third = dy;
  p->y = out;
  share_chunks(ctl, gen, (uint32_t)((size + chunk - 1) / chunk), 0, may_wait);
}

// The helper's side of one chunk it has claimed. Not inlined: helper_loop never returns, so V8
// runs it as first compiled (Liftoff, its baseline tier) for the thread's whole life, and the
// chunk's copy to the output, inlined there, ran at a fraction of the optimized code's speed (4%
// of a LoRA step's samples in a profile); a function of its own is called afresh for each chunk
// and moves to the optimizing tier.
__attribute__((noinline)) static void help_with(struct control *ctl, int chunk, uint32_t gen) {
  uint32_t *word = &chunk_words(ctl)[chunk];
  const uint32_t mine = gen << 2 | HELPER;
  if (__sync_val_compare_and_swap(word, gen << 2 | OPEN, mine) != (gen << 2 | OPEN)) return;
  // Arguments read while the chunk is still ours are this call's: the caller writes the next
  // call's only after taking this chunk back.
  int32_t *from = (int32_t *)&ctl->call, *to = (int32_t *)&ctl->helper_args;
  for (unsigned i = 0; i < sizeof(struct args) / sizeof(int32_t); i++) to[i] = __atomic_load_n(&from[i], __ATOMIC_RELAXED);
  __atomic_thread_fence(SEQ);
  if (__atomic_load_n(word, SEQ) != mine) return;
  // The test switch for a helper descheduled mid-chunk: it sleeps until the caller has taken the
  // chunk back (1 s at most), and 20 ms more, so the call has returned when it computes the chunk,
  // whose late result must then stay out of the output.
  if (__atomic_load_n(&ctl->test_mode, SEQ) == 2) {
    for (int ms = 0; ms < 1000 && __atomic_load_n(word, SEQ) == mine; ms++) __builtin_wasm_memory_atomic_wait32((int *)word, (int)mine, 1000000);
    __builtin_wasm_memory_atomic_wait32((int *)&ctl->stop, 0, 20000000);
  }
  const struct args *p = &ctl->helper_args;
  // Read after the chunk's arguments: a buffer set for this call (control_helper_scratch) before it
  // was published is the one seen here.
  float *packed_b = __atomic_load_n(&ctl->helper_scratch, SEQ);
  float *out = packed_b + (is_activation(p->kind)                                                ? 0
                           : p->kind == ATTENTION_FORWARD || p->kind == ATTENTION_BACKWARD ? attention_work_floats(p->kind, p->t, p->d)
                           : p->kind != PRODUCT                                           ? lora_work_floats(p->kind, p->in, p->out, p->rank, p->row_block, p->w != 0)
                                                                                          : p->panel_group * NR * p->k + 32 + a_copy_floats(p->tri, p->k, p->n, p->a_rs, p->a_cs));
  run_chunk(p, chunk, packed_b, ctl->packed[1], gen, out);
  if (__sync_val_compare_and_swap(word, mine, gen << 2 | COPYING) != mine) return;
  // The test switch for a helper that dies mid-copy: it traps here, its host reports the failure,
  // and the caller, which waits for a copy in progress, must take the chunk back.
  if (__atomic_load_n(&ctl->test_mode, SEQ) == 3) __builtin_trap();
  copy_chunk(p, chunk, out);
  // Counted before the caller can see the chunk done (and return).
  __atomic_add_fetch(&ctl->helper_chunks, 1, SEQ);
  __atomic_store_n(word, gen << 2 | DONE, SEQ);
  if (__atomic_load_n(&ctl->caller_waiting, SEQ)) __builtin_wasm_memory_atomic_notify((int *)word, 1);
}

/// Give the helper a larger buffer of its own (`scratch`, whose size is the caller's to respect) for
/// the calls published from now on. The caller never frees a buffer it has replaced: a helper
/// descheduled mid-chunk may still be writing an earlier call's abandoned result into it.
__attribute__((export_name("control_helper_scratch"))) void control_helper_scratch(struct control *ctl, float *scratch) { __atomic_store_n(&ctl->helper_scratch, scratch, SEQ); }

// The helper thread's whole life: sleep until a call publishes a generation, claim its chunks
// until none is left, sleep again; return once helper_stop was called.
__attribute__((export_name("helper_loop"))) void helper_loop(struct control *ctl) {
  __atomic_store_n(&ctl->helper_running, 1, SEQ);
  while (!__atomic_load_n(&ctl->stop, SEQ)) {
    const uint32_t gen = (uint32_t)(__atomic_load_n(&ctl->state, SEQ) >> 32);
    if (__atomic_load_n(&ctl->test_mode, SEQ) != 1) {
      for (int chunk; (chunk = claim(ctl, gen, 1)) >= 0;) help_with(ctl, chunk, gen);
    }
    // Returns at once if a newer generation is already published.
    __builtin_wasm_memory_atomic_wait32(generation_word(ctl), (int)gen, -1);
  }
  __atomic_store_n(&ctl->helper_running, 0, SEQ);
}

// Make helper_loop return: the stop flag, then a generation without chunks to wake it.
__attribute__((export_name("helper_stop"))) void helper_stop(struct control *ctl) {
  __atomic_store_n(&ctl->stop, 1, SEQ);
  const uint64_t gen = (__atomic_load_n(&ctl->state, SEQ) >> 32) + 1;
  __atomic_store_n(&ctl->state, gen << 32, SEQ);
  __builtin_wasm_memory_atomic_notify(generation_word(ctl), 1);
}
#endif
