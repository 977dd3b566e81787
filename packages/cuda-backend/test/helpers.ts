import * as tf from '@tensorflow/tfjs-core';
import type { ModuleImporter } from '../src/index.node.js';
import { NATIVE_BACKEND_NAME } from '../src/native.js';

/** The error Node's ESM loader throws for a package that is not installed. */
export function notInstalledError(specifier: string): Error {
  return Object.assign(new Error(`Cannot find package '${specifier}' imported from /app/node_modules/@lora/cuda-backend/dist/index.js`), {
    code: 'ERR_MODULE_NOT_FOUND',
  });
}

/** An importer for which no optional package is installed. */
export const nothingInstalled: ModuleImporter = (specifier) => Promise.reject(notInstalledError(specifier));

/**
 * Stand-in for tfjs-node(-gpu): registers a `tensorflow` backend that is really tfjs's plain JS CPU
 * backend (its kernels copied under the new name), with tfjs-node's `isUsingGpuDevice` flag.
 */
export async function registerFakeTensorflowBackend(options: { gpu: boolean }): Promise<void> {
  await import('@tensorflow/tfjs');
  const cpuFactory = tf.findBackendFactory('cpu');
  if (cpuFactory === null) throw new Error('tfjs-backend-cpu is not registered');
  for (const kernel of tf.getKernelsForBackend('cpu')) {
    if (tf.getKernel(kernel.kernelName, NATIVE_BACKEND_NAME) === undefined) tf.registerKernel({ ...kernel, backendName: NATIVE_BACKEND_NAME });
  }
  tf.registerBackend(NATIVE_BACKEND_NAME, async () => {
    const backend = await cpuFactory();
    return Object.assign(backend, { isGPUPackage: true, isUsingGpuDevice: options.gpu });
  });
}

/** Remove the stand-in `tensorflow` backend again. */
export function removeFakeTensorflowBackend(): void {
  if (tf.findBackendFactory(NATIVE_BACKEND_NAME) !== null) tf.removeBackend(NATIVE_BACKEND_NAME);
}
