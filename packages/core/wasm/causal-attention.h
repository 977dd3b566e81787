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
// Each matrix is one chunk of the two-thread protocol in batch-matmul.c. Included by
// batch-matmul.c (pack_b, multiply_triangular, TRI_*); no stack, no data.

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

// Row r of S (r + 1 kept keys) becomes row r of P in place, its whole 4-value vectors written (the
// lanes past the kept keys become 0: rows are padded to a multiple of 4, see attention_row_floats);
// its max and 1/Σ go to stats[0], stats[1]. With `stats_in`, the max and 1/Σ are taken from there
// (the backward pass's recomputation) instead of found.
__attribute__((noinline)) static void softmax_row(float *row, int r, float scale, float *stats, int stats_in) {
  const int n = r + 1;
  const v128_t vs = wasm_f32x4_splat(scale);
  v128_t vmax = wasm_f32x4_splat(ATTENTION_PAD);
  for (int j = 0; j < n; j += 4) {
    const v128_t z = wasm_v128_bitselect(wasm_f32x4_mul(wasm_v128_load(row + j), vs), wasm_f32x4_splat(ATTENTION_PAD), kept_lanes(j, n));
    wasm_v128_store(row + j, z);
    vmax = wasm_f32x4_pmax(vmax, z);
  }
  vmax = wasm_f32x4_pmax(vmax, wasm_i32x4_shuffle(vmax, vmax, 2, 3, 0, 1));
  const v128_t vtop = stats_in ? wasm_f32x4_splat(stats[0]) : wasm_f32x4_pmax(vmax, wasm_i32x4_shuffle(vmax, vmax, 1, 0, 3, 2));
  v128_t vsum = wasm_f32x4_splat(0.0f);
  for (int j = 0; j < n; j += 4) {
    const v128_t e = exp_nonpositive(wasm_f32x4_sub(wasm_v128_load(row + j), vtop));
    wasm_v128_store(row + j, e);
    vsum = wasm_f32x4_add(vsum, e);
  }
  const float reciprocal = stats_in ? stats[1] : 1.0f / sum_lanes(vsum);
  const v128_t vr = wasm_f32x4_splat(reciprocal);
  for (int j = 0; j < n; j += 4) wasm_v128_store(row + j, wasm_f32x4_mul(wasm_v128_load(row + j), vr));
  if (!stats_in) {
    stats[0] = wasm_f32x4_extract_lane(vtop, 0);
    stats[1] = reciprocal;
  }
}

// Row r of dP (r + 1 kept keys) becomes row r of dS = scale·P·(dP − Σ dP·P) in place (P's row as
// softmax_row left it).
__attribute__((noinline)) static void softmax_grad_row(float *dp, const float *p, int r, float scale) {
  const int n = r + 1;
  v128_t vdot = wasm_f32x4_splat(0.0f);
  // dP's lanes past the kept keys are the padding's (anything): zero them, so P's zeros stay zeros.
  for (int j = 0; j < n; j += 4) {
    const v128_t g = wasm_v128_and(wasm_v128_load(dp + j), kept_lanes(j, n));
    wasm_v128_store(dp + j, g);
    vdot = wasm_f32x4_add(vdot, wasm_f32x4_mul(g, wasm_v128_load(p + j)));
  }
  const v128_t dot = wasm_f32x4_splat(sum_lanes(vdot)), vs = wasm_f32x4_splat(scale);
  for (int j = 0; j < n; j += 4) wasm_v128_store(dp + j, wasm_f32x4_mul(wasm_f32x4_mul(wasm_v128_load(p + j), wasm_f32x4_sub(wasm_v128_load(dp + j), dot)), vs));
}

// P of matrix `i` into `p` (T×T, zero above the diagonal), from q, k and, with `stats_in`, the
// forward pass's stats (else found and written to `stats`).
static void attention_probabilities(int t, int d, float scale, const float *q, const float *k, float *stats, int stats_in, float *packed, float *edge, float *p) {
  const int ld = attention_row_floats(t);
  // kᵀ as B (k = D terms, T columns): its columns are k's rows, contiguous.
  pack_b(k, d, t, 1, d, packed);
  multiply_triangular(TRI_LOWER_OUTPUT, q, d, 1, packed, d, t, t, 0, 0, p, ld, edge);
  for (int r = 0; r < t; r++) softmax_row(p + r * ld, r, scale, stats + 2 * r, stats_in);
}

// Matrix `i` of a call (q, k, v, dO, O/dq, dk, dv: [matrices, T, D]; stats [matrices, T, 2]). Its
// results go where they belong (`staging` 0), or to `staging` laid out as attention_result_floats says.
__attribute__((noinline)) static void attention_matrix(int kind, int t, int d, float scale, const float *q, const float *k, const float *v, const float *dout, float *stats, float *o,
                                                       float *dk, float *dv, int i, float *work, float *staging) {
  const int size = t * d, ld = attention_row_floats(t);
  q += i * size;
  k += i * size;
  v += i * size;
  float *packed = work, *edge = work + attention_packed_floats(t, d), *p = edge + 32;
  if (kind == ATTENTION_FORWARD) {
    float *o_i = staging ? staging : o + i * size;
    float *stats_i = staging ? staging + size : stats + i * 2 * t;
    attention_probabilities(t, d, scale, q, k, stats_i, 0, packed, edge, p);
    pack_b(v, t, d, d, 1, packed);
    multiply_triangular(TRI_LOWER_A, p, ld, 1, packed, t, t, d, 0, 0, o_i, d, edge);
    return;
  }
  const float *dout_i = dout + i * size;
  float *dq_i = staging ? staging : o + i * size;
  float *dk_i = staging ? staging + size : dk + i * size;
  float *dv_i = staging ? staging + 2 * size : dv + i * size;
  float *ds = p + t * ld;
  attention_probabilities(t, d, scale, q, k, stats + i * 2 * t, 1, packed, edge, p);
  // dP = tril(dO·vᵀ), then dS in place.
  pack_b(v, d, t, 1, d, packed);
  multiply_triangular(TRI_LOWER_OUTPUT, dout_i, d, 1, packed, d, t, t, 0, 0, ds, ld, edge);
  for (int r = 0; r < t; r++) softmax_grad_row(ds + r * ld, p + r * ld, r, scale);
  pack_b(k, t, d, d, 1, packed);
  multiply_triangular(TRI_LOWER_A, ds, ld, 1, packed, t, t, d, 0, 0, dq_i, d, edge);
  pack_b(q, t, d, d, 1, packed);
  multiply_triangular(TRI_UPPER_A, ds, 1, ld, packed, t, t, d, 0, 0, dk_i, d, edge);
  pack_b(dout_i, t, d, d, 1, packed);
  multiply_triangular(TRI_UPPER_A, p, 1, ld, packed, t, t, d, 0, 0, dv_i, d, edge);
}

// Copy the helper's results of matrix `i` (see attention_matrix's `staging`) where they belong.
static void attention_copy_matrix(int kind, int t, int d, float *stats, float *o, float *dk, float *dv, int i, const float *staging) {
  const int size = t * d;
  copy_floats(o + i * size, staging, size);
  if (kind == ATTENTION_FORWARD) {
    copy_floats(stats + i * 2 * t, staging + size, 2 * t);
  } else {
    copy_floats(dk + i * size, staging + size, size);
    copy_floats(dv + i * size, staging + 2 * size, size);
  }
}

/// Causal attention's forward pass on the calling thread for `matrices` T×D matrices of q, k, v:
/// O and the stats (see above); `scratch` holds attention_scratch_floats(3, T, D, 0).
__attribute__((export_name("attention_forward"))) void attention_forward(int matrices, int t, int d, float scale, const float *q, const float *k, const float *v, float *o, float *stats,
                                                                         float *scratch) {
  for (int i = 0; i < matrices; i++) attention_matrix(ATTENTION_FORWARD, t, d, scale, q, k, v, 0, stats, o, 0, 0, i, scratch, 0);
}

/// Its backward pass on the calling thread: dq, dk, dv from dO, q, k, v and the forward pass's
/// stats; `scratch` holds attention_scratch_floats(4, T, D, 0).
__attribute__((export_name("attention_backward"))) void attention_backward(int matrices, int t, int d, float scale, const float *dout, const float *q, const float *k, const float *v,
                                                                           const float *stats, float *dq, float *dk, float *dv, float *scratch) {
  for (int i = 0; i < matrices; i++) attention_matrix(ATTENTION_BACKWARD, t, d, scale, q, k, v, dout, (float *)stats, dq, dk, dv, i, scratch, 0);
}
