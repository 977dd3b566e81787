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
//
// The shared-memory build (tfjs's threaded WASM backend) also exports a two-thread entry, where
// the calling thread and one helper thread (a Worker running `helper_loop` on the same memory)
// share the chunks of a product: see "Two threads" below.

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

#ifdef __wasm_atomics__
// Two threads (shared-memory build only).
//
// A product is cut into chunks: one matrix of the stack, times a group of B's 8-column panels,
// times a block of A's rows (the caller picks the group and block sizes; a stack of attention
// matrices is usually one matrix per chunk). The calling thread and one helper thread claim chunks
// through one 64-bit word holding the call's generation, its number of chunks and the next
// unclaimed chunk, so a claim is one compare-and-swap that also checks the generation: a helper
// that wakes late, or reads the word of a finished call, can only fail its swap, never claim a
// chunk of the next call with the previous call's arguments. It reads the arguments only after a
// successful claim, and they cannot change until it reports that chunk done (the caller waits for
// every chunk before it returns, and only then writes the next call's arguments).
//
// The caller never waits for the helper to start: it claims chunks itself until none are left,
// then waits only for the chunks the helper has claimed and not finished. A helper that is
// descheduled (another process holds the second core) claims nothing, and the caller computes
// every chunk alone, at the single-threaded speed.
#include <stdint.h>

#define SEQ __ATOMIC_SEQ_CST
// Caller spins (about 20 µs) on the helper's last chunk before it sleeps in memory.atomic.wait.
#define SPINS 4000

struct control {
  // Generation (bits 32-63) | chunks of the call (bits 16-31) | next unclaimed chunk (bits 0-15).
  uint64_t state;
  uint32_t stop;   // set by helper_stop: helper_loop returns
  uint32_t paused; // a test switch: the helper claims nothing (the caller then computes every chunk)
  uint32_t caller_waiting;
  uint32_t pad0[11];
  // Written by the helper (another cache line than the state the caller polls).
  uint32_t helper_done;    // chunks of the current call the helper finished
  uint32_t helper_chunks;  // chunks the helper computed over all calls (a statistic)
  uint32_t helper_running; // helper_loop has started and not returned
  uint32_t helper_failed;  // set by the helper's host when helper_loop threw: the caller recomputes alone
  uint32_t pad1[12];
  // Per thread: the generation, matrix (-1 for a broadcast B) and panel group its scratch holds packed.
  int32_t packed[2][4];
  // The current call's arguments, written before the state word publishes its generation.
  int32_t m, k, n, a_bs, a_rs, a_cs, b_bs, b_rs, b_cs;
  const float *a, *b;
  float *c, *scratch;
  int32_t scratch_stride, row_block, panel_group, row_groups, panel_groups;
};
_Static_assert(sizeof(struct control) <= 256, "the host allocates 256 bytes for the control block");

static inline int min_int(int x, int y) { return x < y ? x : y; }

// One chunk: matrix i, panel group pg, row block rg, on `thread`'s scratch.
static void run_chunk(struct control *ctl, int chunk, int thread, uint32_t gen) {
  const int row_groups = ctl->row_groups, panel_groups = ctl->panel_groups, k = ctl->k, m = ctl->m, n = ctl->n;
  const int rg = chunk % row_groups;
  const int pg = (chunk / row_groups) % panel_groups;
  const int i = chunk / row_groups / panel_groups;
  const int first_column = pg * ctl->panel_group * NR;
  const int columns = min_int(n - first_column, ctl->panel_group * NR);
  float *packed_b = ctl->scratch + thread * ctl->scratch_stride;
  float *edge = packed_b + ctl->panel_group * NR * k;
  // Consecutive chunks differ in their row block first: the packed panels are reused.
  int32_t *memo = ctl->packed[thread];
  const int b_key = ctl->b_bs != 0 ? i : -1;
  if (memo[0] != (int32_t)gen || memo[1] != b_key || memo[2] != pg) {
    pack_b(ctl->b + i * ctl->b_bs + first_column * ctl->b_cs, k, columns, ctl->b_rs, ctl->b_cs, packed_b);
    memo[0] = (int32_t)gen;
    memo[1] = b_key;
    memo[2] = pg;
  }
  const int first_row = rg * ctl->row_block;
  const int end_row = min_int(m, first_row + ctl->row_block);
  const float *ai = ctl->a + i * ctl->a_bs;
  float *ci = ctl->c + i * m * n;
  for (int jp = 0; jp * NR < columns; jp++) {
    const int j0 = first_column + jp * NR;
    const int panel_columns = min_int(n - j0, NR);
    for (int i0 = first_row; i0 < end_row; i0 += MR) {
      tile(ai + i0 * ctl->a_rs, ctl->a_rs, ctl->a_cs, packed_b + jp * NR * k, k, ci + i0 * n + j0, n, min_int(end_row - i0, MR), panel_columns, edge);
    }
  }
}

// Claim the next chunk of generation `gen`: its index, or -1 when none is left (or the call is over).
static int claim(struct control *ctl, uint32_t gen) {
  for (;;) {
    const uint64_t s = __atomic_load_n(&ctl->state, SEQ);
    const uint32_t next = (uint32_t)s & 0xffff, total = ((uint32_t)s >> 16) & 0xffff;
    if ((uint32_t)(s >> 32) != gen || next >= total) return -1;
    if (__sync_val_compare_and_swap(&ctl->state, s, s + 1) == s) return (int)next;
  }
}

// The generation word (the state's high half) is what the helper sleeps on.
static inline int *generation_word(struct control *ctl) { return (int *)&ctl->state + 1; }

/// Zero a control block (256 bytes) before its helper starts.
__attribute__((export_name("control_init"))) void control_init(struct control *ctl) {
  uint32_t *words = (uint32_t *)ctl;
  for (int i = 0; i < 64; i++) words[i] = 0;
}

// batch_matmul on two threads, chunked by `row_block` rows (a multiple of 4) and `panel_group`
// panels of 8 columns; the chunks (batch · row blocks · panel groups) must number at most 65535.
// `scratch` holds 2 · (panel_group·8·k + 32) floats, one half per thread. `may_wait`: whether this
// thread may sleep in memory.atomic.wait (a browser's main thread may not: it spins instead).
__attribute__((export_name("batch_matmul_threaded"))) void batch_matmul_threaded(struct control *ctl, int batch, int m, int k, int n, const float *a, int a_bs, int a_rs,
                                                                                   int a_cs, const float *b, int b_bs, int b_rs, int b_cs, float *c, float *scratch,
                                                                                   int row_block, int panel_group, int may_wait) {
  const uint32_t gen = (uint32_t)(__atomic_load_n(&ctl->state, SEQ) >> 32) + 1;
  const int panel_groups = ((n + NR - 1) / NR + panel_group - 1) / panel_group;
  const int row_groups = (m + row_block - 1) / row_block;
  const uint32_t total = (uint32_t)(batch * row_groups * panel_groups);
  ctl->m = m;
  ctl->k = k;
  ctl->n = n;
  ctl->a = a;
  ctl->a_bs = a_bs;
  ctl->a_rs = a_rs;
  ctl->a_cs = a_cs;
  ctl->b = b;
  ctl->b_bs = b_bs;
  ctl->b_rs = b_rs;
  ctl->b_cs = b_cs;
  ctl->c = c;
  ctl->scratch = scratch;
  ctl->scratch_stride = panel_group * NR * k + 32;
  ctl->row_block = row_block;
  ctl->panel_group = panel_group;
  ctl->row_groups = row_groups;
  ctl->panel_groups = panel_groups;
  __atomic_store_n(&ctl->helper_done, 0, SEQ);
  // Publish: arguments first, then the word that makes the chunks claimable; then wake the helper.
  __atomic_store_n(&ctl->state, ((uint64_t)gen << 32) | (total << 16), SEQ);
  __builtin_wasm_memory_atomic_notify(generation_word(ctl), 1);
  uint32_t mine = 0;
  for (int chunk; (chunk = claim(ctl, gen)) >= 0; mine++) run_chunk(ctl, chunk, 0, gen);
  // Every chunk is claimed: wait for those the helper claimed (spinning briefly, then sleeping
  // so that a helper descheduled mid-chunk can take this core).
  const uint32_t helper_share = total - mine;
  for (int spins = 0; __atomic_load_n(&ctl->helper_done, SEQ) != helper_share; spins++) {
    if (__atomic_load_n(&ctl->helper_failed, SEQ)) {
      // The helper died inside a chunk and will write nothing more: compute the whole call here.
      for (uint32_t chunk = 0; chunk < total; chunk++) run_chunk(ctl, (int)chunk, 0, gen);
      break;
    }
    if (!may_wait || spins < SPINS) continue;
    __atomic_store_n(&ctl->caller_waiting, 1, SEQ);
    const uint32_t done = __atomic_load_n(&ctl->helper_done, SEQ);
    // A 1 ms timeout: the helper's failure flag comes without a notify.
    if (done != helper_share) __builtin_wasm_memory_atomic_wait32((int *)&ctl->helper_done, (int)done, 1000000);
  }
  __atomic_store_n(&ctl->caller_waiting, 0, SEQ);
}

// The helper thread's whole life: sleep until a call publishes a generation, claim its chunks
// until none is left, sleep again; return once helper_stop was called.
__attribute__((export_name("helper_loop"))) void helper_loop(struct control *ctl) {
  __atomic_store_n(&ctl->helper_running, 1, SEQ);
  while (!__atomic_load_n(&ctl->stop, SEQ)) {
    const uint32_t gen = (uint32_t)(__atomic_load_n(&ctl->state, SEQ) >> 32);
    if (!__atomic_load_n(&ctl->paused, SEQ)) {
      for (int chunk; (chunk = claim(ctl, gen)) >= 0;) {
        run_chunk(ctl, chunk, 1, gen);
        __atomic_add_fetch(&ctl->helper_chunks, 1, SEQ);
        __atomic_add_fetch(&ctl->helper_done, 1, SEQ);
        if (__atomic_load_n(&ctl->caller_waiting, SEQ)) __builtin_wasm_memory_atomic_notify((int *)&ctl->helper_done, 1);
      }
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
