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
// Each matrix is one chunk of the two-thread protocol in batch-matmul.c. The matrices are read and
// written where they lie (attention_offset): a [B, H, T, D] stack, or GPT-2's fused projection
// [B, T, 3·H·D] and its output [B, T, H·D], so no head is split out or merged back by a copy.
// Included by batch-matmul.c (pack_b, multiply_triangular, TRI_*); no stack, no data.

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

// Floats of a thread's working scratch for a matrix: packed operand, `edge` (32), P (T rows) and,
// backward, dP/dS (T rows).
static inline int attention_work_floats(int kind, int t, int d) { return attention_packed_floats(t, d) + 32 + (kind == ATTENTION_FORWARD ? 1 : 2) * t * attention_row_floats(t); }

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

// Row r of S (r + 1 kept keys) becomes row r of P in place, its whole 4-value vectors written (the
// lanes past the kept keys become 0: rows are padded to a multiple of 4, see attention_row_floats);
// its max and 1/Σ go to stats[0], stats[1]. With `stats_in`, the max and 1/Σ are taken from there
// (the backward pass's recomputation) instead of found.
__attribute__((noinline)) static void softmax_row(float *row, int r, int row_floats, float scale, float *stats, int stats_in) {
  const int n = r + 1;
  const v128_t vs = wasm_f32x4_splat(scale);
  // Only the last vector has lanes past the kept keys: they take ATTENTION_PAD.
  const int full = n & ~3;
  const v128_t last_kept = kept_lanes(full, n);
  // The largest scaled score, found without a pass writing the scaled row: rounding is monotonic,
  // so it is the scale times the largest score (the smallest, for a scale that is not positive,
  // found as the largest negated score: `flip` is the sign bit then).
  v128_t vtop;
  if (stats_in)
    vtop = wasm_f32x4_splat(stats[0]);
  else {
    const v128_t flip = scale > 0 ? wasm_f32x4_splat(0.0f) : wasm_f32x4_splat(-0.0f);
    v128_t vmax = wasm_f32x4_splat(ATTENTION_PAD);
    for (int j = 0; j < full; j += 4) vmax = wasm_f32x4_pmax(vmax, wasm_v128_xor(wasm_v128_load(row + j), flip));
    if (full < n) vmax = wasm_f32x4_pmax(vmax, wasm_v128_bitselect(wasm_v128_xor(wasm_v128_load(row + full), flip), wasm_f32x4_splat(ATTENTION_PAD), last_kept));
    vmax = wasm_f32x4_pmax(vmax, wasm_i32x4_shuffle(vmax, vmax, 2, 3, 0, 1));
    vtop = wasm_f32x4_mul(wasm_v128_xor(wasm_f32x4_pmax(vmax, wasm_i32x4_shuffle(vmax, vmax, 1, 0, 3, 2)), flip), vs);
  }
  // e = exp(z − max), then its sum in a pass of its own: with the sum in this loop, the
  // exponential's constants and the sum outnumbered x64's 16 vector registers and V8 kept the
  // sum on the stack, a store and a load per vector.
  for (int j = 0; j < full; j += 4) wasm_v128_store(row + j, exp_nonpositive(wasm_f32x4_sub(wasm_f32x4_mul(wasm_v128_load(row + j), vs), vtop)));
  if (full < n) {
    const v128_t z = wasm_v128_bitselect(wasm_f32x4_mul(wasm_v128_load(row + full), vs), wasm_f32x4_splat(ATTENTION_PAD), last_kept);
    wasm_v128_store(row + full, exp_nonpositive(wasm_f32x4_sub(z, vtop)));
  }
  float reciprocal;
  if (stats_in)
    reciprocal = stats[1];
  else {
    v128_t vsum = wasm_f32x4_splat(0.0f);
    for (int j = 0; j < n; j += 4) vsum = wasm_f32x4_add(vsum, wasm_v128_load(row + j));
    reciprocal = 1.0f / sum_lanes(vsum);
  }
  const v128_t vr = wasm_f32x4_splat(reciprocal);
  for (int j = 0; j < n; j += 4) wasm_v128_store(row + j, wasm_f32x4_mul(wasm_v128_load(row + j), vr));
  zero_past_row(row, n, row_floats);
  if (!stats_in) {
    stats[0] = wasm_f32x4_extract_lane(vtop, 0);
    stats[1] = reciprocal;
  }
}

// Row r of dP (r + 1 kept keys) becomes row r of dS = scale·P·(dP − Σ dP·P) in place (P's row as
// softmax_row left it).
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

// P of a matrix into `p` (T rows; row r written up to 8 values past the end of its last 4-value
// vector, within the row, zeros past key r; what lies further right is left as it was and never
// read), from its q and k (rows `ld` apart) and, with `stats_in`, the forward pass's stats (else
// found and written to `stats`).
static void attention_probabilities(int t, int d, int ld, float scale, const float *q, const float *k, float *stats, int stats_in, float *packed, float *edge, float *p) {
  const int ldp = attention_row_floats(t);
  // kᵀ as B (k = D terms, T columns): its columns are k's rows.
  pack_b(k, d, t, 1, ld, packed);
  multiply_triangular(TRI_LOWER_SCORES, q, ld, 1, packed, d, t, t, 0, 0, p, ldp, edge);
  for (int r = 0; r < t; r++) softmax_row(p + r * ldp, r, ldp, scale, stats + 2 * r, stats_in);
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

// Matrix `i` of a call (q, k, v, dq, dk, dv laid out by `ld_in`, O and dO by `ld_out`, see
// attention_offset; stats [matrices, T, 2]). Its results go where they belong (`staging` 0), or to
// `staging` as T×D blocks laid out as attention_result_floats says.
__attribute__((noinline)) static void attention_matrix(int kind, int t, int d, int heads, int ld_in, int ld_out, float scale, const float *q, const float *k, const float *v,
                                                       const float *dout, float *stats, float *o, float *dk, float *dv, int i, float *work, float *staging) {
  const int size = t * d, ldp = attention_row_floats(t);
  const int in = attention_offset(i, heads, t, d, ld_in), out = attention_offset(i, heads, t, d, ld_out);
  q += in;
  k += in;
  v += in;
  float *packed = work, *edge = work + attention_packed_floats(t, d), *p = edge + 32;
  if (kind == ATTENTION_FORWARD) {
    float *o_i = staging ? staging : o + out;
    float *stats_i = staging ? staging + size : stats + i * 2 * t;
    attention_probabilities(t, d, ld_in, scale, q, k, stats_i, 0, packed, edge, p);
    pack_b(v, t, d, ld_in, 1, packed);
    multiply_triangular(TRI_LOWER_A_ZEROED, p, ldp, 1, packed, t, t, d, 0, 0, o_i, staging ? d : ld_out, edge);
    return;
  }
  const float *dout_i = dout + out;
  const int ld_g = staging ? d : ld_in;
  float *dq_i = staging ? staging : o + in;
  float *dk_i = staging ? staging + size : dk + in;
  float *dv_i = staging ? staging + 2 * size : dv + in;
  float *ds = p + t * ldp;
  attention_probabilities(t, d, ld_in, scale, q, k, stats + i * 2 * t, 1, packed, edge, p);
  // dP = tril(dO·vᵀ), then dS in place.
  pack_b(v, d, t, 1, ld_in, packed);
  multiply_triangular(TRI_LOWER_SCORES, dout_i, ld_out, 1, packed, d, t, t, 0, 0, ds, ldp, edge);
  for (int r = 0; r < t; r++) softmax_grad_row(ds + r * ldp, p + r * ldp, r, ldp, scale);
  pack_b(k, t, d, ld_in, 1, packed);
  multiply_triangular(TRI_LOWER_A_ZEROED, ds, ldp, 1, packed, t, t, d, 0, 0, dq_i, ld_g, edge);
  pack_b(q, t, d, ld_in, 1, packed);
  multiply_triangular(TRI_UPPER_A, ds, 1, ldp, packed, t, t, d, 0, 0, dk_i, ld_g, edge);
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
/// laid out by `heads`, `ld_in` and `ld_out` (see attention_offset): O and the stats (see above);
/// `scratch` holds attention_scratch_floats(3, T, D, 0).
__attribute__((export_name("attention_forward"))) void attention_forward(int matrices, int heads, int t, int d, int ld_in, int ld_out, float scale, const float *q, const float *k,
                                                                         const float *v, float *o, float *stats, float *scratch) {
  for (int i = 0; i < matrices; i++) attention_matrix(ATTENTION_FORWARD, t, d, heads, ld_in, ld_out, scale, q, k, v, 0, stats, o, 0, 0, i, scratch, 0);
}

/// Its backward pass on the calling thread: dq, dk, dv (laid out as q, k, v) from dO, q, k, v and
/// the forward pass's stats; `scratch` holds attention_scratch_floats(4, T, D, 0).
__attribute__((export_name("attention_backward"))) void attention_backward(int matrices, int heads, int t, int d, int ld_in, int ld_out, float scale, const float *dout, const float *q,
                                                                           const float *k, const float *v, const float *stats, float *dq, float *dk, float *dv, float *scratch) {
  for (int i = 0; i < matrices; i++) attention_matrix(ATTENTION_BACKWARD, t, d, heads, ld_in, ld_out, scale, q, k, v, dout, (float *)stats, dq, dk, dv, i, scratch, 0);
}
