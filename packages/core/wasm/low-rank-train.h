// A LoRA layer in training, fused: for x [rows, in], A [rank, in], B [out, rank], scaling s,
//   forward:  hs = s·(x·Aᵀ) [rows, rank] (kept for the backward pass) and y = base + hs·Bᵀ;
//   backward: g = s·(dy·B), dx = g·A, dA = gᵀ·x, dB = dyᵀ·hs.
// Computed a block of rows at a time, each block's rank-r products back to back while its rows are
// in cache. As separate kernels (two products, a scale and an add forward; four products and a
// scale backward) each thin product reached cold operands and a sleeping helper thread on its own:
// measured in a training step at 29-48% of a 1024² product's rate, while each block here is one
// chunk of the two-thread protocol in batch-matmul.c.
//
// With the layer's frozen weight W (and bias), the pass is the whole layer: forward y = x·op(W) +
// bias + hs·Bᵀ, backward dx = dy·op(W)ᵀ + g·A, where op(W) is W [in, out] as GPT-2's Conv1D stores
// it (`w_in_out` 1) or Wᵀ of PyTorch's [out, in]. A block's rank-r term (and the bias) is computed
// first, into scratch, and the base product's tiles start their sums from it (tile_init): base was
// otherwise written by one kernel and read back from memory by the next, and the passes ran at
// 29-40% of the 1024² rate in a step for that traffic alone. op(W) is packed once per call and
// thread, whole (so only layers whose packed weight fits the helper's buffer take this form).
// With dropout on the adapter's input, that input `xa` is not x: hs = s·(xa·Aᵀ), dA = gᵀ·xa, and
// the backward pass gives x's part dy·op(W)ᵀ and xa's part g·A apart (dxa), each flowing back its
// own way (xa's through the dropout's mask).
//
// dA and dB sum over every row: each block writes its part (dA's [rank, in] and dBᵀ's [rank, out])
// into a slot of its own, and the caller adds the slots in block order once every block is done, so
// the result is the same whichever thread computed which block, and on one thread.
//
// Included by batch-matmul.c (it uses pack_b, multiply, NR and MR from there); no stack, no data.

#define LORA_FORWARD 1
#define LORA_BACKWARD 2

static inline int panels_of(int columns) { return (columns + NR - 1) / NR; }

// Floats of a thread's working scratch for a call without the base weight: the packed operands,
// `edge` (32), and for the backward pass a block's g (row_block·rank) and one partial panel of x or
// dy (8·row_block).
static inline int lora_own_floats(int kind, int in, int out, int rank, int row_block) {
  if (kind == LORA_FORWARD) return panels_of(rank) * NR * in + panels_of(out) * NR * rank + 32;
  return panels_of(rank) * NR * out + panels_of(in) * NR * rank + 32 + row_block * rank + NR * row_block;
}

// op(W)'s terms per output in a pass (forward in, backward out: the backward product is dy·op(W)ᵀ)
// and its outputs per row.
static inline int weight_terms(int kind, int in, int out) { return kind == LORA_FORWARD ? in : out; }
static inline int weight_outputs(int kind, int in, int out) { return kind == LORA_FORWARD ? out : in; }
// The strides of the pass's operand of the base product, element (p, j) at w[p·rs + j·cs]: op(W)
// [in, out] forward, op(W)ᵀ [out, in] backward.
static inline int weight_rs(int kind, int in, int out, int w_in_out) { return kind == LORA_FORWARD ? (w_in_out ? out : 1) : (w_in_out ? 1 : in); }
static inline int weight_cs(int kind, int in, int out, int w_in_out) { return kind == LORA_FORWARD ? (w_in_out ? 1 : in) : (w_in_out ? out : 1); }

// Floats of a thread's working scratch for a call: its own (above) and, with the base weight
// (`fused`), op(W) packed and a block's rank-r term (row_block·outputs), in that order.
static inline int lora_work_floats(int kind, int in, int out, int rank, int row_block, int fused) {
  const int outputs = weight_outputs(kind, in, out);
  return lora_own_floats(kind, in, out, rank, row_block) + (fused ? panels_of(outputs) * NR * weight_terms(kind, in, out) + row_block * outputs : 0);
}

// Floats of one block's results, where the helper computes them before copying them out: y's rows
// then hs's (forward), or dx's rows, the block's dA and dBᵀ parts, and with `split` (a separate
// adapter input: `fused` 2) dxa's rows (backward).
static inline int lora_result_floats(int kind, int in, int out, int rank, int row_block, int split) {
  if (kind == LORA_FORWARD) return row_block * (out + rank);
  return row_block * in + rank * (in + out) + (split ? row_block * in : 0);
}

/// Floats of scratch a thread needs for a fused LoRA call (`kind` 1 forward, 2 backward; `fused` 1
/// with the base weight, 2 with it and a separate adapter input): its working scratch, and with
/// `helper` the room for one block's results too. The TypeScript side sizes its buffers with this,
/// so the layout has one definition.
__attribute__((export_name("lora_scratch_floats"))) int lora_scratch_floats(int kind, int in, int out, int rank, int row_block, int fused, int helper) {
  return lora_work_floats(kind, in, out, rank, row_block, fused != 0) + (helper ? lora_result_floats(kind, in, out, rank, row_block, fused == 2) : 0);
}

// The operands every block reads, packed once per call and thread: forward, Aᵀ (k = in) and Bᵀ
// (k = rank); backward, B (k = out) and A (k = rank); and with the base weight `w` (not null), the
// pass's op(W) or op(W)ᵀ after them (see lora_work_floats).
static void lora_pack(int kind, int in, int out, int rank, int row_block, const float *a, const float *b, const float *w, int w_in_out, float *work) {
  if (kind == LORA_FORWARD) {
    pack_b(a, in, rank, 1, in, work);
    pack_b(b, rank, out, 1, rank, work + panels_of(rank) * NR * in);
  } else {
    pack_b(b, out, rank, rank, 1, work);
    pack_b(a, rank, in, in, 1, work + panels_of(rank) * NR * out);
  }
  if (w)
    pack_b(w, weight_terms(kind, in, out), weight_outputs(kind, in, out), weight_rs(kind, in, out, w_in_out), weight_cs(kind, in, out, w_in_out),
           work + lora_own_floats(kind, in, out, rank, row_block));
}

__attribute__((noinline)) static void scale_floats(float *v, int n, float s) {
  const v128_t vs = wasm_f32x4_splat(s);
  int i = 0;
#pragma clang loop unroll(disable)
  for (; i + 4 <= n; i += 4) wasm_v128_store(v + i, wasm_f32x4_mul(wasm_v128_load(v + i), vs));
#pragma clang loop unroll(disable) vectorize(disable)
  for (; i < n; i++) v[i] *= s;
}

__attribute__((noinline)) static void copy_floats(float *to, const float *from, int n) {
  int i = 0;
#pragma clang loop unroll(disable)
  for (; i + 4 <= n; i += 4) wasm_v128_store(to + i, wasm_v128_load(from + i));
#pragma clang loop unroll(disable) vectorize(disable)
  for (; i < n; i++) to[i] = from[i];
}

// Block `block` (rows block·row_block onwards) of a call whose operands `work` holds packed. Its
// results go where they belong (`staging` 0), or to `staging` laid out as lora_result_floats says.
// `third` is base (forward; unused with `w`) or dy (backward); `y` is y (forward) or dx (backward);
// `parts` the blocks' slots of dA and dBᵀ parts (backward). With the base weight `w` (not null; see
// the top of this file), y is the layer's whole output and dx its whole input gradient; `bias` (n
// values, or null) is the base layer's, forward only. `xa` is the adapter's input (x itself, or a
// separate one with `w`); with a separate one the backward pass writes x's part of dx to `y` and
// xa's to `dxa`.
__attribute__((noinline)) static void lora_block(int kind, int rows, int in, int out, int rank, int row_block, float s, const float *x, const float *a, const float *b, const float *third, float *hs,
                       float *y, float *parts, int block, float *work, float *staging, const float *w, int w_in_out, const float *bias, const float *xa, float *dxa) {
  const int w_rs = weight_rs(kind, in, out, w_in_out), w_cs = weight_cs(kind, in, out, w_in_out);
  const float *packed_w = work + lora_own_floats(kind, in, out, rank, row_block);
  float *term = (float *)packed_w + panels_of(weight_outputs(kind, in, out)) * NR * weight_terms(kind, in, out);
  const int r0 = block * row_block;
  const int count = min_int(rows, r0 + row_block) - r0;
  if (kind == LORA_FORWARD) {
    const float *packed_at = work, *packed_bt = work + panels_of(rank) * NR * in;
    float *edge = work + panels_of(rank) * NR * in + panels_of(out) * NR * rank;
    float *y_rows = staging ? staging : y + r0 * out;
    float *hs_rows = staging ? staging + row_block * out : hs + r0 * rank;
    const float *base_rows = third + r0 * out;
    multiply(xa + r0 * in, in, 1, a, 1, in, 0, packed_at, in, count, rank, hs_rows, rank, edge, 0, 0, 0);
    scale_floats(hs_rows, count * rank, s);
    if (w) {
      // term = bias + hs·Bᵀ, then y = term + x·op(W), each tile's sums starting from term's values.
      multiply(hs_rows, rank, 1, b, 1, rank, 0, packed_bt, rank, count, out, term, out, edge, 0, bias, 0);
      multiply(x + r0 * in, in, 1, w, w_rs, w_cs, 0, packed_w, in, count, out, y_rows, out, edge, 0, term, out);
      return;
    }
    // y = base + hs·Bᵀ: each tile's sums start from base's values (see tile_init), so y is written
    // once and base read once, with no pass adding them.
    multiply(hs_rows, rank, 1, b, 1, rank, 0, packed_bt, rank, count, out, y_rows, out, edge, 0, base_rows, out);
    return;
  }
  const float *packed_b = work, *packed_a = work + panels_of(rank) * NR * out;
  float *edge = work + panels_of(rank) * NR * out + panels_of(in) * NR * rank;
  float *g = edge + 32, *tail = g + row_block * rank;
  float *dx_rows = staging ? staging : y ? y + r0 * in : 0;
  float *part_a = staging ? staging + row_block * in : parts + block * rank * (in + out);
  float *part_bt = part_a + rank * in;
  const float *dy_rows = third + r0 * out, *xa_rows = xa + r0 * in, *hs_rows = hs + r0 * rank;
  float *dxa_rows = !dxa ? 0 : staging ? part_bt + rank * out : dxa + r0 * in;
  // g = s·(dy·B): B packed (or streamed in place for fewer than 4 rows).
  multiply(dy_rows, out, 1, b, rank, 1, 0, packed_b, out, count, rank, g, rank, edge, 0, 0, 0);
  scale_floats(g, count * rank, s);
  // dx = g·A (with the base weight: term = g·A, then dx = term + dy·op(W)ᵀ), unless no gradient
  // flows to x (`y` 0: the first adapted layer, whose input depends on no trainable weight).
  if (y && w && dxa) {
    multiply(g, rank, 1, a, in, 1, 0, packed_a, rank, count, in, dxa_rows, in, edge, 0, 0, 0);
    multiply(dy_rows, out, 1, w, w_rs, w_cs, 0, packed_w, out, count, in, dx_rows, in, edge, 0, 0, 0);
  } else if (y && w) {
    multiply(g, rank, 1, a, in, 1, 0, packed_a, rank, count, in, term, in, edge, 0, 0, 0);
    multiply(dy_rows, out, 1, w, w_rs, w_cs, 0, packed_w, out, count, in, dx_rows, in, edge, 0, term, in);
  } else if (y)
    multiply(g, rank, 1, a, in, 1, 0, packed_a, rank, count, in, dx_rows, in, edge, 0, 0, 0);
  // dA's part = gᵀ·x and dBᵀ's part = hsᵀ·dy over the block's rows (k = count): the block's rows of
  // x and dy are read in place, whole panels of 8 columns; only a partial last panel is packed.
  pack_b(xa_rows + (in / NR) * NR, count, in % NR, in, 1, tail);
  multiply(g, 1, rank, xa_rows, in, 1, in / NR, tail, count, rank, in, part_a, in, edge, 0, 0, 0);
  pack_b(dy_rows + (out / NR) * NR, count, out % NR, out, 1, tail);
  multiply(hs_rows, 1, rank, dy_rows, out, 1, out / NR, tail, count, rank, out, part_bt, out, edge, 0, 0, 0);
}

// Copy the helper's results of block `block` (see lora_block's `staging`) where they belong.
static void lora_copy_block(int kind, int rows, int in, int out, int rank, int row_block, float *hs, float *y, float *parts, int block, const float *staging, float *dxa) {
  const int r0 = block * row_block;
  const int count = min_int(rows, r0 + row_block) - r0;
  if (kind == LORA_FORWARD) {
    copy_floats(y + r0 * out, staging, count * out);
    copy_floats(hs + r0 * rank, staging + row_block * out, count * rank);
  } else {
    if (y) copy_floats(y + r0 * in, staging, count * in);
    copy_floats(parts + block * rank * (in + out), staging + row_block * in, rank * (in + out));
    if (dxa) copy_floats(dxa + r0 * in, staging + row_block * in + rank * (in + out), count * in);
  }
}

// dst[i] = Σ over the blocks of their slot's value i (slots `slot` floats apart), in block order;
// dst may be block 0's own values.
__attribute__((noinline)) static void sum_slots(float *dst, const float *parts, int slot, int blocks, int n) {
  int i = 0;
#pragma clang loop unroll(disable)
  for (; i + 4 <= n; i += 4) {
    v128_t sum = wasm_v128_load(parts + i);
#pragma clang loop unroll(disable)
    for (int c = 1; c < blocks; c++) sum = wasm_f32x4_add(sum, wasm_v128_load(parts + c * slot + i));
    wasm_v128_store(dst + i, sum);
  }
#pragma clang loop unroll(disable) vectorize(disable)
  for (; i < n; i++) {
    float sum = parts[i];
#pragma clang loop unroll(disable) vectorize(disable)
    for (int c = 1; c < blocks; c++) sum += parts[c * slot + i];
    dst[i] = sum;
  }
}

// dA = Σ of the blocks' parts; dB = (Σ of their dBᵀ parts)ᵀ, summed into block 0's slot and then
// transposed (a few thousand values once per call).
__attribute__((noinline)) static void lora_sum_parts(int blocks, int in, int out, int rank, float *parts, float *da, float *db) {
  const int slot = rank * (in + out);
  sum_slots(da, parts, slot, blocks, rank * in);
  float *bt = parts + rank * in;
  sum_slots(bt, bt, slot, blocks, rank * out);
  for (int j = 0; j < rank; j++)
#pragma clang loop unroll(disable) vectorize(disable)
    for (int o = 0; o < out; o++) db[o * rank + j] = bt[j * out + o];
}

static inline int blocks_of(int rows, int row_block) { return (rows + row_block - 1) / row_block; }

/// The forward pass on the calling thread: y = base + hs·Bᵀ and hs = s·(x·Aᵀ), `row_block` rows (a
/// multiple of 4) at a time; or, with the base weight `w` (not null; `w_in_out` its layout, `bias`
/// null or n values), y = x·op(W) + bias + hs·Bᵀ and `base` unused, hs from the adapter's input
/// `xa` (x itself, or its dropout). `scratch` holds lora_scratch_floats(1, …, w != 0, 0).
__attribute__((export_name("lora_forward"))) void lora_forward(int rows, int in, int out, int rank, int row_block, float s, const float *x, const float *a, const float *b,
                                                               const float *base, float *hs, float *y, float *scratch, const float *w, int w_in_out, const float *bias,
                                                               const float *xa) {
  lora_pack(LORA_FORWARD, in, out, rank, row_block, a, b, w, w_in_out, scratch);
  for (int block = 0; block < blocks_of(rows, row_block); block++)
    lora_block(LORA_FORWARD, rows, in, out, rank, row_block, s, x, a, b, base, hs, y, 0, block, scratch, 0, w, w_in_out, bias, xa, 0);
}

/// The backward pass on the calling thread: dx (unless `dx` is 0; with the base weight `w`, not
/// null, the layer's whole dx), dA and dB from dy, x, A, B and the forward pass's hs; `parts` holds
/// rank·(in + out) floats per block of `row_block` rows, `scratch` lora_scratch_floats(2, …, w != 0
/// (2 with `dxa`), 0). `xa` is the adapter's input (x itself, or its dropout); with the base weight and
/// `dxa` (not null), dx is x's part dy·op(W)ᵀ and dxa xa's, g·A.
__attribute__((export_name("lora_backward"))) void lora_backward(int rows, int in, int out, int rank, int row_block, float s, const float *dy, const float *x, const float *a,
                                                                 const float *b, const float *hs, float *dx, float *parts, float *da, float *db, float *scratch, const float *w,
                                                                 int w_in_out, const float *xa, float *dxa) {
  lora_pack(LORA_BACKWARD, in, out, rank, row_block, a, b, w, w_in_out, scratch);
  const int blocks = blocks_of(rows, row_block);
  for (int block = 0; block < blocks; block++)
    lora_block(LORA_BACKWARD, rows, in, out, rank, row_block, s, x, a, b, dy, (float *)hs, dx, parts, block, scratch, 0, w, w_in_out, 0, xa, dxa);
  lora_sum_parts(blocks, in, out, rank, parts, da, db);
}
