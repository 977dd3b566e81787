// Causal self-attention in one kernel each way, one matrix (a sequence's head) at a time:
//   forward:  S = tril(q·kᵀ), P = softmax(scale·S) over keys ≤ query, O = tril(P)·v;
//             kept: each query row's max and 1/Σ (stats), not P.
//   backward: P again from q, k and the stats (the same arithmetic, so the same bits),
//             dP = tril(dO·vᵀ), dS = scale·P·(dP − Σⱼ dP·P), dq = tril(dS)·k, dk = tril(dS)ᵀ·q,
//             dv = tril(P)ᵀ·dO.
// As separate kernels (the causal products and the scaled softmax) each pass wrote its
// [batch, heads, T, T] matrix to memory and the next read it back; in a training step they ran at
// about half of a 1024² product's rate. Here a matrix's scores stay in cache from product to
// softmax to product, and the probabilities are never stored (recomputed in the backward pass, as
// FlashAttention does), which also frees the [B, H, T, T] tensor a training step used to keep.
//
// Every value equals what the separate kernels give: the products are multiply_triangular's, and
// the softmax and its gradient sum in the same lanes, in the same order, as softmax.c's
// scaled_softmax(_grad) with the causal mask (whose masked entries add exact zeros).
//
// With dropout on the probabilities (a threshold > 0: attention dropout in training), O = tril(P ⊙ M)·v
// for the mask M the dropout kernel (dropout.c, simd-dropout.h) gives the [matrices, T, T] tensor of
// P from the same seed; backward, dv = tril(P ⊙ M)ᵀ·dO and dP ⊙ M enters the softmax's gradient:
// the separate kernels' values with dropout between them, mask and all, bit for bit.
//
// Each matrix is one chunk of the two-thread protocol in batch-matmul.c. The matrices are read and
// written where they lie (attention_offset): a [B, H, T, D] stack, or GPT-2's fused projection
// [B, T, 3·H·D] and its output [B, T, H·D], so no head is split out or merged back by a copy.
// Included by batch-matmul.c (pack_b, multiply_triangular, TRI_*); no stack, no data.

#include "simd-dropout.h"
#include "simd-exp.h"
#include "simd-lanes.h"

#define ATTENTION_FORWARD 3
#define ATTENTION_BACKWARD 4

// Far below any score, finite: the lanes past a row's last kept key, which exp turns into 0.
#define ATTENTION_PAD -3.0e38f

static inline int attention_packed_floats(int t, int d) { return max_int(panels_of(t) * NR * d, panels_of(d) * NR * t); }

// Floats per row of the scratch matrices P and dS: T rounded up to 4, so a row's last vector lies
// within the row.
static inline int attention_row_floats(int t) { return (t + 3) & ~3; }

// Rows of the scratch matrices P and dS: T rounded up to 4, so that the softmax's last group of four
// rows (softmax_rows4) lies in scratch; its rows past T are computed and never read.
static inline int attention_scratch_rows(int t) { return (t + 3) & ~3; }

// Floats of a thread's working scratch for a matrix: packed operand, `edge` (32), P and, backward,
// dP/dS.
static inline int attention_work_floats(int kind, int t, int d) {
  return attention_packed_floats(t, d) + 32 + (kind == ATTENTION_FORWARD ? 1 : 2) * attention_scratch_rows(t) * attention_row_floats(t);
}

// Floats of one matrix's results where the helper computes them before copying them out: O then
// the stats (forward), or dq, dk, dv (backward).
static inline int attention_result_floats(int kind, int t, int d) { return kind == ATTENTION_FORWARD ? t * d + 2 * t : 3 * t * d; }

/// Floats of scratch a thread needs for a causal attention call (`kind` 3 forward, 4 backward) on
/// T×D matrices: its working scratch, and with `helper` the room for one matrix's results too.
__attribute__((export_name("attention_scratch_floats"))) int attention_scratch_floats(int kind, int t, int d, int helper) {
  return attention_work_floats(kind, t, d) + (helper ? attention_result_floats(kind, t, d) : 0);
}

// Lanes j0..j0+3 that are kept keys of a row with n of them.
static inline v128_t kept_lanes(int j0, int n) { return wasm_i32x4_lt(wasm_i32x4_add(wasm_i32x4_make(0, 1, 2, 3), wasm_i32x4_splat(j0)), wasm_i32x4_splat(n)); }

// The two 4-value vectors after a row's last one (n kept keys), within its `row_floats`, set to 0:
// a 6-row strip of TRI_LOWER_A_ZEROED reads up to 5 terms past a row's diagonal.
static inline void zero_past_row(float *row, int n, int row_floats) {
  const int end = (n + 3) & ~3;
  if (end + 4 <= row_floats) wasm_v128_store(row + end, wasm_f32x4_splat(0.0f));
  if (end + 8 <= row_floats) wasm_v128_store(row + end + 4, wasm_f32x4_splat(0.0f));
}

// The four 4-value vectors a, b, c, d as columns: lane k of column j is lane j of the k-th vector,
// so lane-wise operations on the columns reduce each vector across its lanes.
static inline void transpose4(v128_t a, v128_t b, v128_t c, v128_t d, v128_t *c0, v128_t *c1, v128_t *c2, v128_t *c3) {
  const v128_t ab_low = wasm_i32x4_shuffle(a, b, 0, 4, 1, 5), ab_high = wasm_i32x4_shuffle(a, b, 2, 6, 3, 7);
  const v128_t cd_low = wasm_i32x4_shuffle(c, d, 0, 4, 1, 5), cd_high = wasm_i32x4_shuffle(c, d, 2, 6, 3, 7);
  *c0 = wasm_i32x4_shuffle(ab_low, cd_low, 0, 1, 4, 5);
  *c1 = wasm_i32x4_shuffle(ab_low, cd_low, 2, 3, 6, 7);
  *c2 = wasm_i32x4_shuffle(ab_high, cd_high, 0, 1, 4, 5);
  *c3 = wasm_i32x4_shuffle(ab_high, cd_high, 2, 3, 6, 7);
}

// Rows r0..r0 + 3 of S (r0 a multiple of 4; row r has r + 1 kept keys) become those rows of P in
// place, four rows at a time: one row at a time, a row's short passes were bound by their chains of
// dependent operations (the sum's one accumulator, the reductions across lanes, the division) and
// by each loop's exit; here the four rows share each loop and their chains run side by side
// (attention's forward kernel 1–3% faster in alternating calls). The four rows end in the same 4-value
// vector, the one at r0, where row r0 + k keeps lanes 0..k; each row's vectors are written whole,
// their lanes past the kept keys 0 (rows are padded to a multiple of 4, see attention_row_floats).
// The values are softmax.c's scaled_softmax with the causal mask, bit for bit: the same operations
// on each value, and each row's sum taken in the same lanes, in the same order, its lanes then
// added ((l0 + l1) + l2) + l3 as sum_lanes does (here by adding the transposed sums' columns).
// Only the first `valid` rows (1 to 4) are rows of the matrix: their max and 1/Σ go to stats[2k],
// stats[2k + 1] (with `stats_in`, the backward pass's recomputation, they are taken from there
// instead of found); rows past them (scratch rows past T, see attention_scratch_rows) are computed
// from whatever they hold and never read.
__attribute__((noinline)) static void softmax_rows4(float *row, int r0, int row_floats, float scale, float *stats, int stats_in, int valid) {
  float *const row1 = row + row_floats, *const row2 = row1 + row_floats, *const row3 = row2 + row_floats;
  const v128_t vs = wasm_f32x4_splat(scale), pad = wasm_f32x4_splat(ATTENTION_PAD);
  const v128_t keep0 = wasm_i32x4_make(-1, 0, 0, 0), keep1 = wasm_i32x4_make(-1, -1, 0, 0), keep2 = wasm_i32x4_make(-1, -1, -1, 0);
  v128_t tops;
  if (stats_in)
    tops = wasm_f32x4_make(stats[0], valid > 1 ? stats[2] : 0.0f, valid > 2 ? stats[4] : 0.0f, valid > 3 ? stats[6] : 0.0f);
  else {
    // Each row's largest scaled score, found without a pass writing the scaled row: rounding is
    // monotonic, so it is the scale times the row's largest score (its smallest, for a scale that
    // is not positive, found as the largest negated score: `flip` is the sign bit then).
    const v128_t flip = scale > 0 ? wasm_f32x4_splat(0.0f) : wasm_f32x4_splat(-0.0f);
    v128_t m0 = pad, m1 = pad, m2 = pad, m3 = pad;
    for (int j = 0; j < r0; j += 4) {
      m0 = wasm_f32x4_pmax(m0, wasm_v128_xor(wasm_v128_load(row + j), flip));
      m1 = wasm_f32x4_pmax(m1, wasm_v128_xor(wasm_v128_load(row1 + j), flip));
      m2 = wasm_f32x4_pmax(m2, wasm_v128_xor(wasm_v128_load(row2 + j), flip));
      m3 = wasm_f32x4_pmax(m3, wasm_v128_xor(wasm_v128_load(row3 + j), flip));
    }
    m0 = wasm_f32x4_pmax(m0, wasm_v128_bitselect(wasm_v128_xor(wasm_v128_load(row + r0), flip), pad, keep0));
    m1 = wasm_f32x4_pmax(m1, wasm_v128_bitselect(wasm_v128_xor(wasm_v128_load(row1 + r0), flip), pad, keep1));
    m2 = wasm_f32x4_pmax(m2, wasm_v128_bitselect(wasm_v128_xor(wasm_v128_load(row2 + r0), flip), pad, keep2));
    m3 = wasm_f32x4_pmax(m3, wasm_v128_xor(wasm_v128_load(row3 + r0), flip));
    v128_t c0, c1, c2, c3;
    transpose4(m0, m1, m2, m3, &c0, &c1, &c2, &c3);
    tops = wasm_f32x4_mul(wasm_v128_xor(wasm_f32x4_pmax(wasm_f32x4_pmax(c0, c1), wasm_f32x4_pmax(c2, c3)), flip), vs);
  }
  const v128_t top0 = wasm_i32x4_shuffle(tops, tops, 0, 0, 0, 0), top1 = wasm_i32x4_shuffle(tops, tops, 1, 1, 1, 1);
  const v128_t top2 = wasm_i32x4_shuffle(tops, tops, 2, 2, 2, 2), top3 = wasm_i32x4_shuffle(tops, tops, 3, 3, 3, 3);
  // e = exp(z − max), the vector at r0 included, whole: its lanes past a row's kept keys (scores of
  // later keys, which may exceed the row's max) give anything, finite or not, and are then set to
  // the 0 that masking them with ATTENTION_PAD would give, before any sum reads them. (Masking the
  // scores there instead took a second copy of the exponential's code.)
  for (int j = 0; j <= r0; j += 4) {
    wasm_v128_store(row + j, exp_nonpositive(wasm_f32x4_sub(wasm_f32x4_mul(wasm_v128_load(row + j), vs), top0)));
    wasm_v128_store(row1 + j, exp_nonpositive(wasm_f32x4_sub(wasm_f32x4_mul(wasm_v128_load(row1 + j), vs), top1)));
    wasm_v128_store(row2 + j, exp_nonpositive(wasm_f32x4_sub(wasm_f32x4_mul(wasm_v128_load(row2 + j), vs), top2)));
    wasm_v128_store(row3 + j, exp_nonpositive(wasm_f32x4_sub(wasm_f32x4_mul(wasm_v128_load(row3 + j), vs), top3)));
  }
  wasm_v128_store(row + r0, wasm_v128_and(wasm_v128_load(row + r0), keep0));
  wasm_v128_store(row1 + r0, wasm_v128_and(wasm_v128_load(row1 + r0), keep1));
  wasm_v128_store(row2 + r0, wasm_v128_and(wasm_v128_load(row2 + r0), keep2));
  v128_t reciprocals;
  if (stats_in)
    reciprocals = wasm_f32x4_make(stats[1], valid > 1 ? stats[3] : 0.0f, valid > 2 ? stats[5] : 0.0f, valid > 3 ? stats[7] : 0.0f);
  else {
    // The sums in a pass of their own: with them in the exponential's loop, its constants and the
    // sums outnumbered x64's 16 vector registers and V8 kept the sums on the stack.
    v128_t s0 = wasm_f32x4_splat(0.0f), s1 = s0, s2 = s0, s3 = s0;
    for (int j = 0; j <= r0; j += 4) {
      s0 = wasm_f32x4_add(s0, wasm_v128_load(row + j));
      s1 = wasm_f32x4_add(s1, wasm_v128_load(row1 + j));
      s2 = wasm_f32x4_add(s2, wasm_v128_load(row2 + j));
      s3 = wasm_f32x4_add(s3, wasm_v128_load(row3 + j));
    }
    v128_t c0, c1, c2, c3;
    transpose4(s0, s1, s2, s3, &c0, &c1, &c2, &c3);
    reciprocals = wasm_f32x4_div(wasm_f32x4_splat(1.0f), wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_add(c0, c1), c2), c3));
  }
  const v128_t rec0 = wasm_i32x4_shuffle(reciprocals, reciprocals, 0, 0, 0, 0), rec1 = wasm_i32x4_shuffle(reciprocals, reciprocals, 1, 1, 1, 1);
  const v128_t rec2 = wasm_i32x4_shuffle(reciprocals, reciprocals, 2, 2, 2, 2), rec3 = wasm_i32x4_shuffle(reciprocals, reciprocals, 3, 3, 3, 3);
  for (int j = 0; j <= r0; j += 4) {
    wasm_v128_store(row + j, wasm_f32x4_mul(wasm_v128_load(row + j), rec0));
    wasm_v128_store(row1 + j, wasm_f32x4_mul(wasm_v128_load(row1 + j), rec1));
    wasm_v128_store(row2 + j, wasm_f32x4_mul(wasm_v128_load(row2 + j), rec2));
    wasm_v128_store(row3 + j, wasm_f32x4_mul(wasm_v128_load(row3 + j), rec3));
  }
  zero_past_row(row, r0 + 1, row_floats);
  zero_past_row(row1, r0 + 2, row_floats);
  zero_past_row(row2, r0 + 3, row_floats);
  zero_past_row(row3, r0 + 4, row_floats);
  if (stats_in) return;
  // Row k's max and 1/Σ at stats[2k], stats[2k + 1], for the rows of the matrix only.
  stats[0] = wasm_f32x4_extract_lane(tops, 0);
  stats[1] = wasm_f32x4_extract_lane(reciprocals, 0);
  if (valid > 1) {
    stats[2] = wasm_f32x4_extract_lane(tops, 1);
    stats[3] = wasm_f32x4_extract_lane(reciprocals, 1);
  }
  if (valid > 2) {
    stats[4] = wasm_f32x4_extract_lane(tops, 2);
    stats[5] = wasm_f32x4_extract_lane(reciprocals, 2);
  }
  if (valid > 3) {
    stats[6] = wasm_f32x4_extract_lane(tops, 3);
    stats[7] = wasm_f32x4_extract_lane(reciprocals, 3);
  }
}

// Row r of S (its diagonal at r) becomes row r of P in place over its first `kept` keys (kept ≥ 1; in
// causal attention at most r + 1, fewer for a padding row of a right-padded sequence, whose keys past
// its length are padding; in bidirectional attention the sequence's length), zeros from there to 8
// values past the vector of its diagonal (within the row; see zero_past_row).
// softmax_rows4's arithmetic for one row, the same operations in the same order (the max is exact in
// any order; the sum in the same lanes, then ((l0 + l1) + l2) + l3), so a row of every key up to its
// diagonal gets the values softmax_rows4 gives it. Its max and 1/Σ go to stats[0], stats[1] (taken
// from there with `stats_in`).
__attribute__((noinline)) static void softmax_row_prefix(float *row, int r, int kept, int row_floats, float scale, float *stats, int stats_in) {
  const v128_t vs = wasm_f32x4_splat(scale), pad = wasm_f32x4_splat(ATTENTION_PAD);
  // `full` keys in whole vectors, then the vector at `full` with its lanes below `kept` kept (if any).
  const int full = kept & ~3, end = (kept + 3) & ~3;
  const v128_t keep = kept_lanes(full, kept);
  float top;
  if (stats_in)
    top = stats[0];
  else {
    const v128_t flip = scale > 0 ? wasm_f32x4_splat(0.0f) : wasm_f32x4_splat(-0.0f);
    v128_t m = pad;
    for (int j = 0; j < full; j += 4) m = wasm_f32x4_pmax(m, wasm_v128_xor(wasm_v128_load(row + j), flip));
    if (end > full) m = wasm_f32x4_pmax(m, wasm_v128_bitselect(wasm_v128_xor(wasm_v128_load(row + full), flip), pad, keep));
    m = wasm_f32x4_pmax(m, wasm_i32x4_shuffle(m, m, 2, 3, 0, 1));
    m = wasm_f32x4_pmax(m, wasm_i32x4_shuffle(m, m, 1, 0, 3, 2));
    top = wasm_f32x4_extract_lane(wasm_f32x4_mul(wasm_v128_xor(m, flip), vs), 0);
  }
  const v128_t vtop = wasm_f32x4_splat(top);
  for (int j = 0; j < end; j += 4) wasm_v128_store(row + j, exp_nonpositive(wasm_f32x4_sub(wasm_f32x4_mul(wasm_v128_load(row + j), vs), vtop)));
  if (end > full) wasm_v128_store(row + full, wasm_v128_and(wasm_v128_load(row + full), keep));
  float reciprocal;
  if (stats_in)
    reciprocal = stats[1];
  else {
    v128_t sum = wasm_f32x4_splat(0.0f);
    for (int j = 0; j < end; j += 4) sum = wasm_f32x4_add(sum, wasm_v128_load(row + j));
    reciprocal = 1.0f / sum_lanes(sum);
  }
  const v128_t vrec = wasm_f32x4_splat(reciprocal);
  for (int j = 0; j < end; j += 4) wasm_v128_store(row + j, wasm_f32x4_mul(wasm_v128_load(row + j), vrec));
  // Zeros for the padding keys up to the diagonal, and 8 values past its vector.
  const int zero_end = min_int(row_floats, ((r + 1 + 3) & ~3) + 8);
  for (int j = end; j + 4 <= zero_end; j += 4) wasm_v128_store(row + j, wasm_f32x4_splat(0.0f));
  if (stats_in) return;
  stats[0] = top;
  stats[1] = reciprocal;
}

// Row r of dP (r + 1 kept keys) becomes row r of dS = scale·P·(dP − Σ dP·P) in place (P's row as
// softmax_rows4 left it).
__attribute__((noinline)) static void softmax_grad_row(float *dp, const float *p, int r, int row_floats, float scale) {
  const int n = r + 1;
  v128_t vdot = wasm_f32x4_splat(0.0f);
  // dP's lanes past the kept keys (in the last vector) are the padding's (anything): zero them, so
  // P's zeros stay zeros.
  for (int j = 0; j < n; j += 4) {
    const v128_t loaded = wasm_v128_load(dp + j);
    const v128_t g = j + 4 <= n ? loaded : wasm_v128_and(loaded, kept_lanes(j, n));
    wasm_v128_store(dp + j, g);
    vdot = wasm_f32x4_add(vdot, wasm_f32x4_mul(g, wasm_v128_load(p + j)));
  }
  const v128_t dot = wasm_f32x4_splat(sum_lanes(vdot)), vs = wasm_f32x4_splat(scale);
  for (int j = 0; j < n; j += 4) wasm_v128_store(dp + j, wasm_f32x4_mul(wasm_f32x4_mul(wasm_v128_load(p + j), wasm_f32x4_sub(wasm_v128_load(dp + j), dot)), vs));
  zero_past_row(dp, n, row_floats);
}

// P of a matrix into `p` (attention_scratch_rows(T) rows, of which the first T are P's; row r
// written up to 8 values past the end of its last 4-value vector, within the row, zeros past key r;
// what lies further right is left as it was and never read), from its q and k (rows `ld` apart)
// and, with `stats_in`, the forward pass's stats (else found and written to `stats`). Keys from
// `length` on (< T: a right-padded sequence) are padding: every row keeps keys below it only.
static void attention_probabilities(int t, int d, int ld, float scale, int length, const float *q, const float *k, float *stats, int stats_in, float *packed, float *edge, float *p) {
  const int ldp = attention_row_floats(t);
  // kᵀ as B (k = D terms, T columns): its columns are k's rows.
  pack_b(k, d, t, 1, ld, packed);
  multiply_triangular(TRI_LOWER_SCORES, q, ld, 1, packed, d, t, t, 0, 0, p, ldp, edge);
  for (int r = 0; r < t; r += 4) {
    if (length >= t || r + 3 < length) softmax_rows4(p + r * ldp, r, ldp, scale, stats + 2 * r, stats_in, min_int(4, t - r));
    else
      for (int row = r; row < min_int(r + 4, t); row++) softmax_row_prefix(p + row * ldp, row, min_int(row + 1, length), ldp, scale, stats + 2 * row, stats_in);
  }
}

// Rows of P (or of dP) of matrix i times the dropout mask of their elements, which are elements
// i·T² + r·T + c of the [matrices, T, T] tensor the dropout kernel would mask: row r's vectors up to
// its diagonal (`keys` 0: causal), or its first `keys` keys (bidirectional attention); lanes past
// those hold zeros, or in dP values the softmax's gradient then clears. Counters wrap as the mask's
// 32-bit ones do.
__attribute__((noinline)) static void drop_rows(float *rows, int ldp, int t, int i, unsigned seed, int threshold, float drop_scale, int keys) {
  const v128_t vseed = wasm_u32x4_splat(seed), vthreshold = wasm_i32x4_splat(threshold), vscale = wasm_f32x4_splat(drop_scale), four = wasm_i32x4_splat(4);
  for (int r = 0; r < t; r++) {
    float *row = rows + r * ldp;
    v128_t counters = wasm_i32x4_add(wasm_i32x4_splat((int)(((unsigned)i * (unsigned)t + (unsigned)r) * (unsigned)t)), wasm_i32x4_make(1, 2, 3, 4));
    for (int j = 0, end = keys > 0 ? keys : r + 1; j < end; j += 4) {
      wasm_v128_store(row + j, dropped(wasm_v128_load(row + j), counters, vseed, vthreshold, vscale));
      counters = wasm_i32x4_add(counters, four);
    }
  }
}

// Where a call's matrix i lies: head i % heads of sequence i / heads, whose rows of q, k, v (and of
// their gradients) lie `ld_in` floats apart, and of O and dO `ld_out` apart: [B, H, T, D] stacks
// have heads 1 and both strides D; GPT-2's fused q|k|v [B, T, 3·H·D] has heads H, ld_in 3·H·D (q,
// k, v then start H·D floats apart) and its output [B, T, H·D] ld_out H·D: no head is split out
// of, or merged back into, the layers' layout.
static inline int attention_offset(int i, int heads, int t, int d, int ld) { return (i / heads) * t * ld + (i % heads) * d; }

// `rows` rows of `columns` floats from `from` (rows `ld_from` apart) to `to` (`ld_to` apart).
static void copy_rows(float *to, int ld_to, const float *from, int ld_from, int rows, int columns) {
  for (int r = 0; r < rows; r++) copy_floats(to + r * ld_to, from + r * ld_from, columns);
}

// `rows` rows of D zeros, `ld` apart.
static void zero_rows(float *x, int ld, int rows, int d) {
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < d; j++) x[r * ld + j] = 0.0f;
}

// Bidirectional attention (an encoder's: every query sees every key of its sequence, its first
// `length` ones; the rest are padding) for one matrix: attention_matrix's arguments, the causal
// triangles replaced by full products over the sequence's keys. Forward: S = q·kᵀ over keys below
// `length`, P = softmax(scale·S) row by row (softmax_row_prefix), O = P·v over those keys. Backward:
// P again from the stats, dP = dO·vᵀ, dS = scale·P·(dP − Σ dP·P), dq = dS·k, dk = dSᵀ·q and dv =
// Pᵀ·dO for the sequence's keys, zero for its padding keys. Dropout as in the causal form, on each
// row's kept keys.
static void bidirectional_matrix(int kind, int t, int d, int length, int ld_in, int ld_out, float scale, unsigned seed, int threshold, float drop_scale, const float *q,
                                 const float *k, const float *v, const float *dout_i, float *stats_i, float *o_i, int ld_o, float *dq_i, float *dk_i, float *dv_i, int ld_g, int i,
                                 float *packed, float *edge, float *p, float *ds) {
  const int ldp = attention_row_floats(t);
  // kᵀ as B over the sequence's keys, then the scores and P, one row at a time.
  pack_b(k, d, length, 1, ld_in, packed);
  multiply(q, ld_in, 1, 0, 0, 0, 0, packed, d, t, length, p, ldp, edge, 0, 0, 0);
  const int stats_in = kind == ATTENTION_BACKWARD;
  for (int r = 0; r < t; r++) softmax_row_prefix(p + r * ldp, r, length, ldp, scale, stats_i + 2 * r, stats_in);
  if (kind == ATTENTION_FORWARD) {
    if (threshold > 0) drop_rows(p, ldp, t, i, seed, threshold, drop_scale, length);
    pack_b(v, length, d, ld_in, 1, packed);
    multiply(p, ldp, 1, 0, 0, 0, 0, packed, length, t, d, o_i, ld_o, edge, 0, 0, 0);
    return;
  }
  // dP = dO·vᵀ over the sequence's keys, then dS in place (each row keeps `length` keys).
  pack_b(v, d, length, 1, ld_in, packed);
  multiply(dout_i, ld_out, 1, 0, 0, 0, 0, packed, d, t, length, ds, ldp, edge, 0, 0, 0);
  if (threshold > 0) drop_rows(ds, ldp, t, i, seed, threshold, drop_scale, length);
  for (int r = 0; r < t; r++) softmax_grad_row(ds + r * ldp, p + r * ldp, length - 1, ldp, scale);
  pack_b(k, length, d, ld_in, 1, packed);
  multiply(ds, ldp, 1, 0, 0, 0, 0, packed, length, t, d, dq_i, ld_g, edge, 0, 0, 0);
  // dk = dSᵀ·q and dv = (P ⊙ M)ᵀ·dO: dS and P read transposed in place, for the sequence's keys.
  pack_b(q, t, d, ld_in, 1, packed);
  multiply(ds, 1, ldp, 0, 0, 0, 0, packed, t, length, d, dk_i, ld_g, edge, 0, 0, 0);
  zero_rows(dk_i + length * ld_g, ld_g, t - length, d);
  if (threshold > 0) drop_rows(p, ldp, t, i, seed, threshold, drop_scale, length);
  pack_b(dout_i, t, d, ld_out, 1, packed);
  multiply(p, 1, ldp, 0, 0, 0, 0, packed, t, length, d, dv_i, ld_g, edge, 0, 0, 0);
  zero_rows(dv_i + length * ld_g, ld_g, t - length, d);
}

// Matrix `i` of a call (q, k, v, dq, dk, dv laid out by `ld_in`, O and dO by `ld_out`, see
// attention_offset; stats [matrices, T, 2]), with dropout on its probabilities where `threshold` > 0
// (see drop_rows), and with `lengths` (one per sequence, ≥ 1; null: none) the keys from its
// sequence's length on taken as padding (see attention_probabilities). Its results go where they belong (`staging` 0), or to `staging` as T×D blocks laid
// out as attention_result_floats says.
__attribute__((noinline)) static void attention_matrix(int kind, int t, int d, int heads, int ld_in, int ld_out, float scale, unsigned seed, int threshold, float drop_scale,
                                                       const int *lengths, int causal, const float *q, const float *k, const float *v, const float *dout, float *stats, float *o,
                                                       float *dk, float *dv, int i, float *work, float *staging) {
  const int size = t * d, ldp = attention_row_floats(t);
  // The sequence's length where `lengths` gives one (right padding: its keys from there on are padding).
  const int length = lengths ? min_int(t, lengths[i / heads]) : t;
  const int in = attention_offset(i, heads, t, d, ld_in), out = attention_offset(i, heads, t, d, ld_out);
  q += in;
  k += in;
  v += in;
  float *packed = work, *edge = work + attention_packed_floats(t, d), *p = edge + 32;
  if (!causal) {
    if (kind == ATTENTION_FORWARD)
      bidirectional_matrix(kind, t, d, length, ld_in, ld_out, scale, seed, threshold, drop_scale, q, k, v, 0, staging ? staging + size : stats + i * 2 * t, staging ? staging : o + out,
                           staging ? d : ld_out, 0, 0, 0, 0, i, packed, edge, p, 0);
    else
      bidirectional_matrix(kind, t, d, length, ld_in, ld_out, scale, seed, threshold, drop_scale, q, k, v, dout + out, stats + i * 2 * t, 0, 0, staging ? staging : o + in,
                           staging ? staging + size : dk + in, staging ? staging + 2 * size : dv + in, staging ? d : ld_in, i, packed, edge, p, p + attention_scratch_rows(t) * ldp);
    return;
  }
  if (kind == ATTENTION_FORWARD) {
    float *o_i = staging ? staging : o + out;
    float *stats_i = staging ? staging + size : stats + i * 2 * t;
    attention_probabilities(t, d, ld_in, scale, length, q, k, stats_i, 0, packed, edge, p);
    if (threshold > 0) drop_rows(p, ldp, t, i, seed, threshold, drop_scale, 0);
    pack_b(v, t, d, ld_in, 1, packed);
    multiply_triangular(TRI_LOWER_A_ZEROED, p, ldp, 1, packed, t, t, d, 0, 0, o_i, staging ? d : ld_out, edge);
    return;
  }
  const float *dout_i = dout + out;
  const int ld_g = staging ? d : ld_in;
  float *dq_i = staging ? staging : o + in;
  float *dk_i = staging ? staging + size : dk + in;
  float *dv_i = staging ? staging + 2 * size : dv + in;
  float *ds = p + attention_scratch_rows(t) * ldp;
  attention_probabilities(t, d, ld_in, scale, length, q, k, stats + i * 2 * t, 1, packed, edge, p);
  // dP = tril(dO·vᵀ), then dS in place.
  pack_b(v, d, t, 1, ld_in, packed);
  multiply_triangular(TRI_LOWER_SCORES, dout_i, ld_out, 1, packed, d, t, t, 0, 0, ds, ldp, edge);
  // With dropout that was the gradient of P ⊙ M: times M, the gradient of P.
  if (threshold > 0) drop_rows(ds, ldp, t, i, seed, threshold, drop_scale, 0);
  for (int r = 0; r < t; r++) softmax_grad_row(ds + r * ldp, p + r * ldp, r, ldp, scale);
  pack_b(k, t, d, ld_in, 1, packed);
  multiply_triangular(TRI_LOWER_A_ZEROED, ds, ldp, 1, packed, t, t, d, 0, 0, dq_i, ld_g, edge);
  pack_b(q, t, d, ld_in, 1, packed);
  multiply_triangular(TRI_UPPER_A, ds, 1, ldp, packed, t, t, d, 0, 0, dk_i, ld_g, edge);
  // dv from the probabilities the forward pass multiplied v by: P ⊙ M with dropout.
  if (threshold > 0) drop_rows(p, ldp, t, i, seed, threshold, drop_scale, 0);
  pack_b(dout_i, t, d, ld_out, 1, packed);
  multiply_triangular(TRI_UPPER_A, p, 1, ldp, packed, t, t, d, 0, 0, dv_i, ld_g, edge);
}

// Copy the helper's results of matrix `i` (see attention_matrix's `staging`) where they belong.
static void attention_copy_matrix(int kind, int t, int d, int heads, int ld_in, int ld_out, float *stats, float *o, float *dk, float *dv, int i, const float *staging) {
  const int size = t * d;
  if (kind == ATTENTION_FORWARD) {
    copy_rows(o + attention_offset(i, heads, t, d, ld_out), ld_out, staging, d, t, d);
    copy_floats(stats + i * 2 * t, staging + size, 2 * t);
  } else {
    const int in = attention_offset(i, heads, t, d, ld_in);
    copy_rows(o + in, ld_in, staging, d, t, d);
    copy_rows(dk + in, ld_in, staging + size, d, t, d);
    copy_rows(dv + in, ld_in, staging + 2 * size, d, t, d);
  }
}

/// Causal attention's forward pass on the calling thread for `matrices` T×D matrices of q, k, v
/// laid out by `heads`, `ld_in` and `ld_out` (see attention_offset), with dropout (seed, threshold,
/// scale as the dropout kernel takes them) where `threshold` > 0 and each sequence's length (right
/// padding; `lengths` null: none), causal (`causal` 1) or bidirectional (0, see bidirectional_matrix): O
/// and the stats (see above);
/// `scratch` holds attention_scratch_floats(3, T, D, 0).
__attribute__((export_name("attention_forward"))) void attention_forward(int matrices, int heads, int t, int d, int ld_in, int ld_out, float scale, unsigned seed, int threshold,
                                                                         float drop_scale, const int *lengths, int causal, const float *q, const float *k, const float *v, float *o, float *stats, float *scratch) {
  for (int i = 0; i < matrices; i++) attention_matrix(ATTENTION_FORWARD, t, d, heads, ld_in, ld_out, scale, seed, threshold, drop_scale, lengths, causal, q, k, v, 0, stats, o, 0, 0, i, scratch, 0);
}

/// Its backward pass on the calling thread: dq, dk, dv (laid out as q, k, v) from dO, q, k, v, the
/// forward pass's stats and its dropout; `scratch` holds attention_scratch_floats(4, T, D, 0).
__attribute__((export_name("attention_backward"))) void attention_backward(int matrices, int heads, int t, int d, int ld_in, int ld_out, float scale, unsigned seed, int threshold,
                                                                           float drop_scale, const int *lengths, int causal, const float *dout, const float *q, const float *k, const float *v, const float *stats, float *dq,
                                                                           float *dk, float *dv, float *scratch) {
  for (int i = 0; i < matrices; i++) attention_matrix(ATTENTION_BACKWARD, t, d, heads, ld_in, ld_out, scale, seed, threshold, drop_scale, lengths, causal, q, k, v, dout, (float *)stats, dq, dk, dv, i, scratch, 0);
}
