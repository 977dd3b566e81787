import * as tf from '@tensorflow/tfjs-core';

/**
 * tfjs's WASM backend has no `UnsortedSegmentSum`, which is the gradient of `gather`
 * (embedding lookups). Register a plain-JS kernel for any backend that lacks it, through
 * tfjs's own kernel registry, so full fine-tuning of embeddings works everywhere.
 */
export function registerMissingGradientKernels(backendName: string): void {
  if (tf.getKernel('UnsortedSegmentSum', backendName) !== undefined) return;
  tf.registerKernel({
    kernelName: 'UnsortedSegmentSum',
    backendName,
    kernelFunc: ({ inputs, backend, attrs }) => {
      const { x, segmentIds } = inputs as { x: tf.TensorInfo; segmentIds: tf.TensorInfo };
      const { numSegments } = attrs as unknown as { numSegments: number };
      const kernelBackend = backend as tf.KernelBackend;
      const values = kernelBackend.readSync(x.dataId) as Float32Array;
      const ids = kernelBackend.readSync(segmentIds.dataId) as Int32Array;
      // segmentIds covers the leading dimensions of x; the rest is one row per id.
      const idCount = ids.length;
      const rowSize = idCount === 0 ? 0 : values.length / idCount;
      const outShape = [numSegments, ...x.shape.slice(segmentIds.shape.length)];
      const out = new Float32Array(numSegments * rowSize);
      for (let i = 0; i < idCount; i++) {
        const segment = ids[i]!;
        if (segment < 0 || segment >= numSegments) continue;
        const source = i * rowSize;
        const target = segment * rowSize;
        for (let j = 0; j < rowSize; j++) out[target + j]! += values[source + j]!;
      }
      const dataId = kernelBackend.write(out, outShape, 'float32');
      return { dataId, shape: outShape, dtype: 'float32' };
    },
  });
}
