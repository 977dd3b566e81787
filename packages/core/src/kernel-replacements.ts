import * as tf from '@tensorflow/tfjs-core';

/**
 * Kernels replaced in tfjs's kernel registry, per backend, with the stock ones kept so they can be
 * put back: the bookkeeping behind core's WASM kernels.
 */
export class KernelReplacements {
  private readonly replaced = new Map<string, Map<string, tf.KernelConfig>>();

  /**
   * Replace each kernel named in `wrappers` (when registered for `backendName` and not yet replaced)
   * by the kernel function its wrapper makes from the stock kernel.
   * @returns The kernel names replaced by this call.
   */
  replace(backendName: string, wrappers: Readonly<Record<string, (stock: tf.KernelConfig) => tf.KernelFunc>>): string[] {
    const done = this.replaced.get(backendName) ?? new Map<string, tf.KernelConfig>();
    const changed: string[] = [];
    for (const [kernelName, wrap] of Object.entries(wrappers)) {
      if (done.has(kernelName)) continue;
      const stock = tf.getKernel(kernelName, backendName);
      if (stock === undefined) continue;
      tf.unregisterKernel(kernelName, backendName);
      tf.registerKernel({ ...stock, kernelFunc: wrap(stock) });
      done.set(kernelName, stock);
      changed.push(kernelName);
    }
    this.replaced.set(backendName, done);
    return changed;
  }

  /** Put the stock kernels of `backendName` back. @returns The kernel names restored. */
  restore(backendName: string): string[] {
    const restored: string[] = [];
    for (const [kernelName, stock] of this.replaced.get(backendName) ?? []) {
      tf.unregisterKernel(kernelName, backendName);
      tf.registerKernel(stock);
      restored.push(kernelName);
    }
    this.replaced.delete(backendName);
    return restored;
  }

  /** The kernel names of `backendName` currently replaced. */
  names(backendName: string): string[] {
    return [...(this.replaced.get(backendName)?.keys() ?? [])];
  }
}
