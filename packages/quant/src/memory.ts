import * as tf from '@tensorflow/tfjs-core';
import type { Module } from '@lora/core';
import { QuantLinear } from './quant-layer.js';
import { adapterVariables } from './tree-paths.js';

/** An optimizer whose state size can be measured: core's `AdamW` or {@link AdamW8bit} (its 8-bit encoding). */
export interface MeasurableOptimizer {
  /** Bytes of optimizer state held now; `total` sums every variable's stored moments. */
  stateBytes(): {
    /** Bytes of every variable's stored moments, whatever their encoding; reported as `optimizerState`. */
    readonly total: number;
  };
}

/** Bytes held by a (Q)LoRA model, by component. See {@link memoryReport}. */
export interface QuantMemoryReport {
  /** Number of 4-bit layers. */
  readonly quantizedLayers: number;
  /** Packed 4-bit codes (Uint8Array), summed over layers. */
  readonly packedWeights: number;
  /** Per-layer quantization statistics: absmax (float32, or 8-bit codes plus nested absmax with double quantization). */
  readonly quantState: number;
  /** Code tables (`quant_map`, `nested_quant_map`), each distinct table counted once (shared tables are shared). */
  readonly quantTables: number;
  /** float32 size of the same 4-bit weights (4 bytes × out × in). */
  readonly float32Equivalent: number;
  /** (packedWeights + quantState + quantTables) / float32Equivalent. */
  readonly quantizedFraction: number;
  /** Bits per quantized parameter, tables included. */
  readonly bitsPerParameter: number;
  /** Pre-merge states kept for exact unmerging, and float32 merged weights (merge mode `dequantize`). */
  readonly mergeState: number;
  /** Adapter tensors (LoRA A/B, modules_to_save copies), float32. */
  readonly adapters: number;
  /** Every other parameter of the model (biases, embeddings, norms, unquantized layers), float32. */
  readonly otherParameters: number;
  /** Optimizer state, when an optimizer was given (0 otherwise). */
  readonly optimizerState: number;
  /** Sum of all the above components. */
  readonly total: number;
  /** A readable multi-line summary. */
  readonly summary: string;
}

function optimizerBytes(optimizer: MeasurableOptimizer | undefined): number {
  return optimizer ? optimizer.stateBytes().total : 0;
}

function formatBytes(bytes: number): string {
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(2)} MiB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/**
 * Measure the bytes a model holds, by component, from the actual buffers: packed 4-bit codes,
 * quantization state, code tables, adapters, other parameters and (optionally) optimizer state.
 *
 * @example
 * const report = memoryReport(peft.model, { optimizer });
 * console.log(report.summary);
 */
export function memoryReport(model: Module, options: { readonly optimizer?: MeasurableOptimizer } = {}): QuantMemoryReport {
  let quantizedLayers = 0;
  let packedWeights = 0;
  let quantState = 0;
  let float32Equivalent = 0;
  let mergeState = 0;
  const tables = new Set<Float32Array>();
  for (const [, module] of model.namedModules()) {
    if (!(module instanceof QuantLinear)) continue;
    quantizedLayers += 1;
    const state = module.quantState;
    const bytes = module.storageBytes();
    packedWeights += bytes.packed;
    quantState += bytes.statistics;
    mergeState += bytes.floatWeight;
    tables.add(state.quantMap);
    if (state.nested) tables.add(state.nested.quantMap);
    float32Equivalent += state.shape[0] * state.shape[1] * 4;
  }
  let quantTables = 0;
  for (const table of tables) quantTables += table.byteLength;
  const owned = adapterVariables(model);
  let adapters = 0;
  let otherParameters = 0;
  for (const [, variable] of model.namedParameters()) {
    const bytes = variable.size * 4;
    if (owned.has(variable)) adapters += bytes;
    else otherParameters += bytes;
  }
  const optimizerState = optimizerBytes(options.optimizer);
  const quantized = packedWeights + quantState + quantTables;
  const quantizedFraction = float32Equivalent === 0 ? 0 : quantized / float32Equivalent;
  const bitsPerParameter = float32Equivalent === 0 ? 0 : (quantized * 8) / (float32Equivalent / 4);
  const total = quantized + mergeState + adapters + otherParameters + optimizerState;
  const summary = [
    `4-bit layers: ${quantizedLayers}`,
    `packed weights: ${formatBytes(packedWeights)}`,
    `quant state: ${formatBytes(quantState)} (+ tables ${formatBytes(quantTables)})`,
    `4-bit total: ${formatBytes(quantized)} = ${(100 * quantizedFraction).toFixed(2)}% of float32 ${formatBytes(float32Equivalent)} (${bitsPerParameter.toFixed(3)} bits/parameter)`,
    `merge state: ${formatBytes(mergeState)}`,
    `adapters: ${formatBytes(adapters)}`,
    `other parameters: ${formatBytes(otherParameters)}`,
    `optimizer state: ${formatBytes(optimizerState)}`,
    `total: ${formatBytes(total)}`,
  ].join('\n');
  return {
    quantizedLayers,
    packedWeights,
    quantState,
    quantTables,
    float32Equivalent,
    quantizedFraction,
    bitsPerParameter,
    mergeState,
    adapters,
    otherParameters,
    optimizerState,
    total,
    summary,
  };
}

/** What {@link measurePeakTensorBytes} returns. */
export interface PeakTensorBytes<T> {
  /** What the measured function returned (awaited when it returned a promise). */
  readonly result: T;
  /** tfjs tensor bytes (variables included) before the call. */
  readonly startBytes: number;
  /** The most tensor bytes alive at once during the call (sampled after every kernel). */
  readonly peakBytes: number;
  /** Tensor bytes after the call. */
  readonly endBytes: number;
  /** peakBytes − startBytes: what the call needed on top of what was already alive. */
  readonly transientBytes: number;
}

/**
 * Run `fn` (e.g. one training step) under tfjs's profiler and report the peak tensor bytes. Tensor
 * bytes are tfjs's own count (`tf.memory().numBytes`); packed 4-bit codes are plain `Uint8Array`s and
 * are reported by {@link memoryReport}. Profiling reads every kernel output, so time it separately.
 */
export async function measurePeakTensorBytes<T>(fn: () => T | Promise<T>): Promise<PeakTensorBytes<T>> {
  const startBytes = tf.memory().numBytes;
  let result: T | undefined;
  const info = await tf.profile(async () => {
    result = await fn();
    return [];
  });
  const endBytes = tf.memory().numBytes;
  const peakBytes = Math.max(startBytes, endBytes, Number.isFinite(info.peakBytes) ? info.peakBytes : 0);
  return { result: result as T, startBytes, peakBytes, endBytes, transientBytes: peakBytes - startBytes };
}
