import type * as tf from '@tensorflow/tfjs-core';
import { FUSED_KERNELS_WASM_PLAIN } from './wasm-fused-kernels-binary.js';
import { BackendWasmModule } from './wasm-module.js';

/**
 * Core's module of fused elementwise and copy kernels (wasm/layer-norm.c: LayerNorm and RMSNorm,
 * softmax.c, adamw.c, cross-entropy.c,
 * dropout.c, reductions.c, low-rank.c, copy-blocks.c, dequantize.c, sensitivity.c, rotary.c), instantiated per WASM backend. Pointers are byte offsets in the backend's memory.
 */
export interface FusedKernelsExports {
  layerNorm(rows: number, d: number, x: number, w: number, b: number, eps: number, y: number): void;
  layerNormGrad(rows: number, d: number, dy: number, x: number, w: number, eps: number, dx: number): void;
  layerNormWeightGrad(rows: number, d: number, dy: number, x: number, eps: number, dw: number): void;
  rmsNorm(rows: number, d: number, x: number, w: number, eps: number, y: number): void;
  rmsNormGrad(rows: number, d: number, dy: number, x: number, w: number, eps: number, dx: number): void;
  rmsNormWeightGrad(rows: number, d: number, dy: number, x: number, eps: number, dw: number): void;
  /** `mask` 0 for none; row r of the scores uses mask row r mod `maskRows`. */
  scaledSoftmax(rows: number, n: number, x: number, scale: number, mask: number, maskRows: number, y: number): void;
  scaledSoftmaxGrad(rows: number, n: number, dy: number, y: number, scale: number, dx: number): void;
  adamw(
    size: number,
    p: number,
    g: number,
    m: number,
    v: number,
    beta1: number,
    rest1: number,
    beta2: number,
    rest2: number,
    decay: number,
    applyDecay: number,
    sqrtC2: number,
    epsilon: number,
    stepSize: number,
    pOut: number,
    mOut: number,
    vOut: number
  ): void;
  crossEntropy(rows: number, n: number, logits: number, labels: number, loss: number): void;
  crossEntropyGrad(rows: number, n: number, dloss: number, logits: number, labels: number, dlogits: number): void;
  /** y[i] = x[i]·(scale where the top 24 bits of hash(seed, i) ≥ threshold, else 0). */
  dropout(size: number, x: number, seed: number, threshold: number, scale: number, y: number): void;
  sumOfSquares(size: number, x: number): number;
  /** dst[j] = Σ_i src[i·cols + j]. */
  sumRows(rows: number, cols: number, src: number, dst: number): void;
  /** 1 when every value is finite, else 0. */
  allFinite(size: number, x: number): number;
  /** out = base + s·(x·Aᵀ)·Bᵀ row by row; `t` is `rank` floats of scratch. */
  lowRankAdd(rows: number, inFeatures: number, rank: number, outFeatures: number, x: number, a: number, b: number, base: number, scaling: number, t: number, out: number): void;
  /** dst[b][j][i] = src[b][i][j] for `batch` matrices of rows × cols 4-byte values. */
  transposeLastTwo(batch: number, rows: number, cols: number, src: number, dst: number): void;
  /** n0·n1·n2 blocks of `bytes` bytes, block (i0, i1, i2) from src + Σ iₖ·ssₖ to dst + Σ iₖ·dsₖ. */
  copyBlocks(bytes: number, dst: number, src: number, n0: number, ss0: number, ds0: number, n1: number, ss1: number, ds1: number, n2: number, ss2: number, ds2: number): void;
  /** out[i] = code[nibble i of packed] · absmax[⌊i / blockSize⌋] for `length` values (see wasm/dequantize.c). */
  dequantize4bit(length: number, packed: number, absmax: number, blockSize: number, code: number, out: number): void;
  /** AdaLoRA's smoothed sensitivity and uncertainty of one factor (see wasm/sensitivity.c). */
  sensitivityUpdate(size: number, p: number, g: number, s: number, u: number, beta1: number, rest1: number, beta2: number, rest2: number, sOut: number, uOut: number): void;
  /** Rotary embedding of rows x [n0, n1, n2, d], row (i0, i1, i2) by table row i0·s0 + i1·s1 + i2·s2 of d/2 angles; `sign` −1 rotates back (see wasm/rotary.c). */
  rotary(n0: number, n1: number, n2: number, d: number, s0: number, s1: number, s2: number, x: number, cos: number, sin: number, sign: number, y: number): void;
}

export const fusedKernels = new BackendWasmModule<FusedKernelsExports>({ plain: FUSED_KERNELS_WASM_PLAIN }, (exports) => ({
  layerNorm: exports['layer_norm'] as FusedKernelsExports['layerNorm'],
  layerNormGrad: exports['layer_norm_grad'] as FusedKernelsExports['layerNormGrad'],
  layerNormWeightGrad: exports['layer_norm_weight_grad'] as FusedKernelsExports['layerNormWeightGrad'],
  rmsNorm: exports['rms_norm'] as FusedKernelsExports['rmsNorm'],
  rmsNormGrad: exports['rms_norm_grad'] as FusedKernelsExports['rmsNormGrad'],
  rmsNormWeightGrad: exports['rms_norm_weight_grad'] as FusedKernelsExports['rmsNormWeightGrad'],
  scaledSoftmax: exports['scaled_softmax'] as FusedKernelsExports['scaledSoftmax'],
  scaledSoftmaxGrad: exports['scaled_softmax_grad'] as FusedKernelsExports['scaledSoftmaxGrad'],
  adamw: exports['adamw'] as FusedKernelsExports['adamw'],
  crossEntropy: exports['cross_entropy'] as FusedKernelsExports['crossEntropy'],
  crossEntropyGrad: exports['cross_entropy_grad'] as FusedKernelsExports['crossEntropyGrad'],
  dropout: exports['dropout'] as FusedKernelsExports['dropout'],
  sumOfSquares: exports['sum_of_squares'] as FusedKernelsExports['sumOfSquares'],
  sumRows: exports['sum_rows'] as FusedKernelsExports['sumRows'],
  allFinite: exports['all_finite'] as FusedKernelsExports['allFinite'],
  lowRankAdd: exports['low_rank_add'] as FusedKernelsExports['lowRankAdd'],
  transposeLastTwo: exports['transpose_last_two'] as FusedKernelsExports['transposeLastTwo'],
  copyBlocks: exports['copy_blocks'] as FusedKernelsExports['copyBlocks'],
  dequantize4bit: exports['dequantize_4bit'] as FusedKernelsExports['dequantize4bit'],
  sensitivityUpdate: exports['sensitivity_update'] as FusedKernelsExports['sensitivityUpdate'],
  rotary: exports['rotary'] as FusedKernelsExports['rotary'],
}));

/** Instantiate the module for `backend` asynchronously (initRuntime does this for `wasm`; see {@link BackendWasmModule.prepare}). */
export const prepareFusedKernels = (backend: tf.KernelBackend): Promise<boolean> => fusedKernels.prepare(backend);
