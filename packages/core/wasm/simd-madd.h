// acc + a·b, four lanes: a product's step. Built twice (scripts/build-wasm.mjs): plain, a multiply
// then an add; with LORA_FMA (and -mrelaxed-simd), relaxed SIMD's f32x4.relaxed_madd, one fused
// multiply-add where the CPU has FMA (x86-64 with FMA3, ARM64): in the products' 4×8 tile, 8 fused
// instructions a step instead of 16 (and a 6×8 tile for dense products, batch-matmul.c's tile6_from): on this project's machine the 1024² product went from 68-70 to
// 74-88 GFLOP/s and LoRA steps 8-29% faster. relaxed_madd may round once (fused) or twice, as the
// CPU does: the same on every call on one machine, so one thread and two still agree bit for bit.
#ifndef LORA_SIMD_MADD_H
#define LORA_SIMD_MADD_H
#include <wasm_simd128.h>

#ifdef LORA_FMA
#if __has_builtin(__builtin_wasm_relaxed_madd_f32x4)
#define MADD(a, b, acc) __builtin_wasm_relaxed_madd_f32x4((a), (b), (acc))
#else
// clang 14 knows only the proposal's earlier f32x4.fma (opcode 0xfd 0xaf 0x01), which engines no
// longer accept: scripts/build-wasm.mjs rewrites each one to relaxed_madd (0xfd 0x85 0x02), whose
// operands, in the order pushed here, are (a, b, acc) = a·b + acc.
#define MADD(a, b, acc) __builtin_wasm_fma_f32x4((a), (b), (acc))
#endif
#else
#define MADD(a, b, acc) wasm_f32x4_add((acc), wasm_f32x4_mul((a), (b)))
#endif

#endif
