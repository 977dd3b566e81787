import * as tf from '@tensorflow/tfjs-core';
import { ATTENTION_GRAD_KERNEL, ATTENTION_KERNEL } from './bidirectional-attention.js';
import { CAUSAL_MIX_KERNEL, CAUSAL_SCORES_KERNEL } from './causal-products.js';
import { CAUSAL_ATTENTION_GRAD_KERNEL, CAUSAL_ATTENTION_KERNEL, CAUSAL_SELF_ATTENTION_GRAD_KERNEL, CAUSAL_SELF_ATTENTION_KERNEL } from './causal-attention.js';
import { LORA_BACKWARD_KERNEL, LORA_FORWARD_KERNEL, LORA_LINEAR_BACKWARD_KERNEL, LORA_LINEAR_DROPOUT_FORWARD_KERNEL, LORA_LINEAR_FORWARD_KERNEL } from './low-rank-train.js';

/** One kernel call seen by {@link spyOnKernels}. */
export interface KernelCall {
  /** tfjs kernel name, e.g. `BatchMatMul`. */
  readonly kernelName: string;
  /** Shapes of the named inputs, in the kernel's input order. */
  readonly inputShapes: Readonly<Record<string, readonly number[]>>;
  /** Data ids of the named inputs (to recognise a given tensor, e.g. a frozen weight). */
  readonly inputDataIds: Readonly<Record<string, tf.DataId>>;
  /** Shapes of the outputs. */
  readonly outputShapes: readonly (readonly number[])[];
  /** Data ids of the outputs (an output sharing its input's data has the input's id). */
  readonly outputDataIds: readonly tf.DataId[];
  /** The kernel's attributes (e.g. `transposeA`). */
  readonly attrs: Readonly<tf.NamedAttrMap>;
  /** Kernels running this one (0: called by the engine; 1: called from inside another kernel). */
  readonly depth: number;
  /** Wall time of the call, including the kernels it called (ms). */
  readonly totalMs: number;
  /** Wall time less that of the kernels it called (ms): summing it over calls counts every ms once. */
  readonly selfMs: number;
}

/** What {@link spyOnKernels} returns. */
export interface KernelSpy {
  /** Calls recorded so far, in the order they finished. */
  readonly calls: KernelCall[];
  /** Forget the calls recorded so far (the spy keeps recording). */
  reset(): void;
  /** Put the original kernels back. Idempotent. */
  stop(): void;
}

/**
 * Record every kernel call of one backend (name, shapes, attributes, timing) by wrapping the
 * kernels registered for it in tfjs's kernel registry. Unlike `tf.profile`, it also sees the
 * kernels a kernel calls itself through the registry (e.g. the transposes of core's WASM matMul),
 * and every call is counted once in `selfMs`. Kernels are synchronous on the WASM and plain-JS
 * backends, so the times are real; on other backends they are dispatch times.
 *
 * Register no kernels for `backendName` while a spy runs (stop it first): `stop()` restores the
 * kernels it wrapped.
 *
 * @param backendName tfjs backend name (default: the active backend).
 * @example
 * const spy = spyOnKernels();
 * tf.tidy(() => model.forward(ids));
 * spy.stop();
 * const products = spy.calls.filter((call) => call.kernelName === 'BatchMatMul').length;
 */
export function spyOnKernels(backendName: string = tf.getBackend()): KernelSpy {
  const calls: KernelCall[] = [];
  const originals = tf.getKernelsForBackend(backendName);
  // Time of the kernels called by the running ones, per nesting level.
  const childMs: number[] = [];
  for (const original of originals) {
    const kernelFunc = original.kernelFunc;
    tf.unregisterKernel(original.kernelName, backendName);
    tf.registerKernel({
      ...original,
      kernelFunc: (args) => {
        const depth = childMs.length;
        childMs.push(0);
        const started = performance.now();
        let result: tf.TensorInfo | tf.TensorInfo[] | undefined;
        try {
          result = kernelFunc(args);
          return result;
        } finally {
          const totalMs = performance.now() - started;
          const nestedMs = childMs.pop()!;
          if (depth > 0) childMs[depth - 1]! += totalMs;
          const inputShapes: Record<string, readonly number[]> = {};
          const inputDataIds: Record<string, tf.DataId> = {};
          for (const [name, info] of Object.entries(args.inputs)) {
            if (info === undefined) continue;
            inputShapes[name] = [...info.shape];
            inputDataIds[name] = info.dataId;
          }
          const outputs = result === undefined ? [] : Array.isArray(result) ? result : [result];
          calls.push({
            kernelName: original.kernelName,
            inputShapes,
            inputDataIds,
            outputShapes: outputs.map((output) => [...output.shape]),
            outputDataIds: outputs.map((output) => output.dataId),
            attrs: { ...(args.attrs ?? {}) },
            depth,
            totalMs,
            selfMs: totalMs - nestedMs,
          });
        }
      },
    });
  }
  let stopped = false;
  return {
    calls,
    reset: () => void calls.splice(0, calls.length),
    stop: () => {
      if (stopped) return;
      stopped = true;
      for (const original of originals) {
        tf.unregisterKernel(original.kernelName, backendName);
        tf.registerKernel(original);
      }
    },
  };
}

/**
 * Floating-point operations of a matMul kernel call (`BatchMatMul` or `_FusedMatMul`):
 * 2·(batch·m·n)·k, k read from the left operand's shape and `transposeA`; of a LoRA layer's fused
 * pass ({@link LORA_FORWARD_KERNEL}, {@link LORA_BACKWARD_KERNEL}), its rank-r products' (forward
 * x·Aᵀ and hs·Bᵀ: 2·rows·rank·(in + out); backward twice that: dy·B, g·A, gᵀ·x and dyᵀ·hs), and with
 * the base layer's product ({@link LORA_LINEAR_FORWARD_KERNEL}, {@link LORA_LINEAR_DROPOUT_FORWARD_KERNEL}, {@link LORA_LINEAR_BACKWARD_KERNEL}
 * with `inputGradient`) 2·rows·in·out more; of a
 * causal product ({@link CAUSAL_SCORES_KERNEL}, {@link CAUSAL_MIX_KERNEL}), its triangle's:
 * batch·D·T·(T + 1); of causal attention in one kernel ({@link CAUSAL_ATTENTION_KERNEL},
 * {@link CAUSAL_ATTENTION_GRAD_KERNEL}, and on a fused projection, {@link CAUSAL_SELF_ATTENTION_KERNEL}), its causal products' (two forward: scores and output; five
 * backward: the scores again, dP, dq, dk, dv), its softmax not counted. 0 for other kernels.
 */
export function matMulFlops(call: Pick<KernelCall, 'kernelName' | 'inputShapes' | 'outputShapes' | 'attrs'>): number {
  const linearForward = call.kernelName === LORA_LINEAR_FORWARD_KERNEL || call.kernelName === LORA_LINEAR_DROPOUT_FORWARD_KERNEL;
  const forward = call.kernelName === LORA_FORWARD_KERNEL || linearForward;
  const linear = linearForward || call.kernelName === LORA_LINEAR_BACKWARD_KERNEL;
  if (forward || linear || call.kernelName === LORA_BACKWARD_KERNEL) {
    const [rank, inFeatures] = call.inputShapes['a'] ?? [0, 0];
    const outFeatures = call.inputShapes['b']?.[0] ?? 0;
    const rows = call.inputShapes['x']?.[0] ?? 0;
    const baseProduct = linear && (forward || call.attrs['inputGradient'] !== false) ? 2 * rows * inFeatures! * outFeatures : 0;
    return baseProduct + (forward ? 2 : 4) * rows * rank! * (inFeatures! + outFeatures);
  }
  if (call.kernelName === CAUSAL_SCORES_KERNEL || call.kernelName === CAUSAL_MIX_KERNEL) {
    // The triangle's terms only, 2·D·T(T+1)/2 a matrix: T(T+1)/2 scores of D terms each, or T·D outputs of (T+1)/2 terms on average.
    const b = call.inputShapes['b'] ?? [];
    const out = call.outputShapes[0] ?? [];
    if (b.length < 2 || out.length < 2) return 0;
    const [rows, depth] = b.slice(-2) as [number, number];
    return out.slice(0, -2).reduce((product, dimension) => product * dimension, 1) * depth * rows * (rows + 1);
  }
  if (call.kernelName === CAUSAL_SELF_ATTENTION_KERNEL || call.kernelName === CAUSAL_SELF_ATTENTION_GRAD_KERNEL) {
    const [batch, rows, width] = call.inputShapes['qkv'] ?? [];
    const products = call.kernelName === CAUSAL_SELF_ATTENTION_KERNEL ? 2 : 5;
    // heads·D = width / 3 per sequence: D·T·(T + 1) a head.
    return batch === undefined || rows === undefined || width === undefined ? 0 : (products * batch * (width / 3) * rows * (rows + 1));
  }
  if (call.kernelName === CAUSAL_ATTENTION_KERNEL || call.kernelName === CAUSAL_ATTENTION_GRAD_KERNEL) {
    const q = call.inputShapes['q'] ?? [];
    if (q.length < 2) return 0;
    const [rows, depth] = q.slice(-2) as [number, number];
    const products = call.kernelName === CAUSAL_ATTENTION_KERNEL ? 2 : 5;
    return products * q.slice(0, -2).reduce((product, dimension) => product * dimension, 1) * depth * rows * (rows + 1);
  }
  if (call.kernelName === ATTENTION_KERNEL || call.kernelName === ATTENTION_GRAD_KERNEL) {
    // Bidirectional: full products over each sequence's keys, 2·T·L·D each per head (width = heads·D).
    const [batch, rows, width] = call.inputShapes['q'] ?? [];
    if (batch === undefined || rows === undefined || width === undefined) return 0;
    const lengths = (call.attrs['keyLengths'] as number[] | undefined) ?? [];
    const keys = lengths.length === batch ? lengths.reduce((sum, length) => sum + length, 0) : batch * rows;
    return (call.kernelName === ATTENTION_KERNEL ? 2 : 5) * 2 * rows * keys * width;
  }
  if (call.kernelName !== 'BatchMatMul' && call.kernelName !== '_FusedMatMul') return 0;
  const a = call.inputShapes['a'];
  const out = call.outputShapes[0];
  if (a === undefined || out === undefined || a.length < 2) return 0;
  const k = call.attrs['transposeA'] === true ? a[a.length - 2]! : a[a.length - 1]!;
  return 2 * out.reduce((product, dimension) => product * dimension, 1) * k;
}
