import * as tf from '@tensorflow/tfjs-core';

const PATCHED = new Set<string>();

type KernelArguments = Parameters<tf.KernelFunc>[0];

/**
 * Make transposed matrix products fast on tfjs's WASM backend. Its XNNPACK kernel only has a fast
 * path for plain `a·b`: with `transposeA` it runs about 40× slower and with `transposeB` about 12×
 * slower (measured on 2048×1024·1024×256). Every `[out, in]` Linear, attention's q·kᵀ and all matmul
 * gradients take those paths. This re-registers `BatchMatMul` and `_FusedMatMul` for `wasm` through
 * tfjs's kernel registry so that they transpose the operand explicitly (a cheap copy) and then run the
 * fast path. Results are the same products; only the summation order inside XNNPACK may differ.
 *
 * Call it after `initRuntime()`; it does nothing on other backends and when called twice.
 * @returns whether the WASM kernels are (now) patched.
 * @example
 * await initRuntime();
 * useFastWasmMatMul();
 */
export function useFastWasmMatMul(): boolean {
  let patched = false;
  for (const kernelName of ['BatchMatMul', '_FusedMatMul']) {
    if (PATCHED.has(kernelName)) {
      patched = true;
      continue;
    }
    const original = tf.getKernel(kernelName, 'wasm');
    const transpose = tf.getKernel('Transpose', 'wasm');
    if (!original || !transpose) continue;
    const kernelFunc = (args: KernelArguments): tf.TensorInfo | tf.TensorInfo[] => {
      const attrs = args.attrs as { transposeA?: boolean; transposeB?: boolean } & tf.NamedAttrMap;
      if (!attrs.transposeA && !attrs.transposeB) return original.kernelFunc(args);
      const inputs = args.inputs as Record<string, tf.TensorInfo>;
      const made: tf.TensorInfo[] = [];
      const swapLast = (x: tf.TensorInfo): tf.TensorInfo => {
        const rank = x.shape.length;
        const perm = Array.from({ length: rank }, (_, i) => (i === rank - 2 ? rank - 1 : i === rank - 1 ? rank - 2 : i));
        const out = transpose.kernelFunc({ inputs: { x }, backend: args.backend, attrs: { perm } }) as tf.TensorInfo;
        made.push(out);
        return out;
      };
      const a = attrs.transposeA ? swapLast(inputs['a']!) : inputs['a']!;
      const b = attrs.transposeB ? swapLast(inputs['b']!) : inputs['b']!;
      try {
        return original.kernelFunc({ ...args, inputs: { ...inputs, a, b }, attrs: { ...attrs, transposeA: false, transposeB: false } });
      } finally {
        for (const info of made) (args.backend as tf.KernelBackend).disposeData(info.dataId);
      }
    };
    tf.unregisterKernel(kernelName, 'wasm');
    tf.registerKernel({ ...original, kernelFunc: kernelFunc as tf.KernelFunc });
    PATCHED.add(kernelName);
    patched = true;
  }
  return patched;
}
