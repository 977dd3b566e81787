import * as tf from '@tensorflow/tfjs-core';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  ADAPTER_CONFIG_NAME,
  ADAPTER_WEIGHTS_NAME,
  AdapterModel,
  ConfigError,
  createLoraRegistry,
  initRuntime,
  loadAdapter,
  LoraError,
  lora,
  NonFiniteTensorError,
  readBinarySource,
  saveAdapter,
  serializeAdapter,
  serializeAdapterAsync,
  type BinarySource,
} from '../src/index.js';
import { fileHost, setFileHost, yieldToEventLoop } from '../src/internal.js';
import { installNodeFileHost } from '../src/node-file-host.js';
import { expectTensorsClose, withoutTensorLeaks } from '../src/testing.js';
import { Gpt2ShapedTree } from './helpers.js';

const registry = createLoraRegistry({ plugins: [lora({ seed: 5 })] });

/** An adapter model whose LoRA B is not zero, so a load that did nothing would show. */
function trainedModel(): AdapterModel<Gpt2ShapedTree> {
  const adapterModel = AdapterModel.create(new Gpt2ShapedTree({ width: 16 }), { registry, config: { r: 2, targetModules: ['c_attn', 'c_fc'] } });
  for (const [name, variable] of adapterModel.model.namedParameters()) {
    if (name.includes('lora_B')) tf.tidy(() => variable.assign(tf.randomNormal(variable.shape, 0, 0.5, 'float32', 7)));
  }
  adapterModel.model.eval();
  return adapterModel;
}

let directory: string;

beforeAll(async () => {
  await initRuntime();
  directory = await mkdtemp(path.join(tmpdir(), 'lora-bytes-'));
});

afterAll(async () => {
  await rm(directory, { recursive: true, force: true });
});

describe('serializeAdapter', () => {
  it('gives byte for byte the two files saveAdapter writes', async () => {
    await withoutTensorLeaks(async () => {
      const adapterModel = trainedModel();
      const files = serializeAdapter(adapterModel);
      await saveAdapter(adapterModel, directory);
      expect([...files.keys()].sort()).toEqual([ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]);
      for (const [name, bytes] of files) expect(Buffer.from(bytes).equals(await readFile(path.join(directory, name))), name).toBe(true);
      adapterModel.dispose();
    });
  });

  it('serializeAdapterAsync gives the same bytes, reading every weight asynchronously as it is at the call', async () => {
    await withoutTensorLeaks(async () => {
      const adapterModel = trainedModel();
      const expected = serializeAdapter(adapterModel);
      const synchronous = vi.spyOn(tf.Tensor.prototype, 'dataSync');
      let pending: Promise<Map<string, Uint8Array>>;
      try {
        pending = serializeAdapterAsync(adapterModel);
        expect(synchronous).not.toHaveBeenCalled();
      } finally {
        synchronous.mockRestore();
      }
      // A weight changed while the files are being made: they keep the weights of the call.
      const [, loraB] = adapterModel.model.namedParameters().find(([name]) => name.includes('lora_B'))!;
      tf.tidy(() => loraB.assign(tf.onesLike(loraB)));
      const files = await pending;
      expect([...files.keys()]).toEqual([...expected.keys()]);
      for (const [name, bytes] of files) expect(Buffer.from(bytes).equals(Buffer.from(expected.get(name)!)), name).toBe(true);
      // And refuses a weight that is not finite, as serializeAdapter does.
      tf.tidy(() => loraB.assign(tf.fill(loraB.shape, Number.NaN)));
      await expect(serializeAdapterAsync(adapterModel)).rejects.toThrow(NonFiniteTensorError);
      adapterModel.dispose();
    });
  });
});

describe('loadAdapter', () => {
  it('loads { files } given as Uint8Array, ArrayBuffer, Blob or fetch Response to the outputs a directory load gives', async () => {
    await withoutTensorLeaks(async () => {
      const adapterModel = trainedModel();
      const x = tf.randomNormal([3, 16], 0, 1, 'float32', 2);
      const expected = adapterModel.model.forward(x);
      const files = serializeAdapter(adapterModel);
      const copy = (bytes: Uint8Array): ArrayBuffer => bytes.slice().buffer as ArrayBuffer;
      const sources: Record<string, (bytes: Uint8Array) => BinarySource> = {
        Uint8Array: (bytes) => bytes,
        ArrayBuffer: copy,
        Blob: (bytes) => new Blob([copy(bytes)]),
        Response: (bytes) => new Response(copy(bytes)),
      };
      for (const [kind, wrap] of Object.entries(sources)) {
        const fresh = new AdapterModel(new Gpt2ShapedTree({ width: 16 }), { registry });
        await loadAdapter(fresh, { files: Object.fromEntries([...files].map(([name, bytes]) => [name, wrap(bytes)])) });
        fresh.model.eval();
        const actual = fresh.model.forward(x);
        expectTensorsClose(actual, expected, { atol: 0, rtol: 0 });
        const base = fresh.disableAdapters(() => fresh.model.forward(x));
        expect(tf.tidy(() => tf.max(tf.abs(tf.sub(base, actual))).dataSync()[0]!), kind).toBeGreaterThan(1e-3);
        tf.dispose([actual, base]);
        fresh.dispose();
      }
      tf.dispose([x, expected]);
      adapterModel.dispose();
    });
  });

  it('names the missing file when { files } lacks the weights', async () => {
    const adapterModel = trainedModel();
    const config = serializeAdapter(adapterModel).get(ADAPTER_CONFIG_NAME)!;
    const fresh = new AdapterModel(new Gpt2ShapedTree({ width: 16 }), { registry });
    const loading = loadAdapter(fresh, { files: new Map([[ADAPTER_CONFIG_NAME, config]]), name: 'upload' });
    await expect(loading).rejects.toThrow(ConfigError);
    await expect(loadAdapter(fresh, { files: new Map([[ADAPTER_CONFIG_NAME, config]]), name: 'upload' })).rejects.toThrow(
      /adapter_model\.safetensors must be a file of upload, got \["adapter_config\.json"\]/u,
    );
    fresh.dispose();
    adapterModel.dispose();
  });
});

describe('readBinarySource', () => {
  it('returns a Uint8Array as it is and copies nothing', async () => {
    const bytes = new Uint8Array([1, 2, 3]);
    expect(await readBinarySource(bytes)).toBe(bytes);
    expect([...(await readBinarySource(new Blob([new Uint8Array([4, 5])])))]).toEqual([4, 5]);
  });
});

describe('fileHost', () => {
  it('makes path APIs throw a LoraError saying to pass bytes when no file system is installed (a browser)', async () => {
    const adapterModel = trainedModel();
    setFileHost(null);
    try {
      expect(fileHost().kind).toBe('none');
      await expect(saveAdapter(adapterModel, directory)).rejects.toThrow(LoraError);
      await expect(loadAdapter(adapterModel, directory, { adapterName: 'other' })).rejects.toThrow(
        /Cannot read .*adapter_config\.json: this runtime has no file system .*serializeAdapter\(\) \/ loadAdapter\(model, \{ files \}\)/u,
      );
    } finally {
      installNodeFileHost();
      adapterModel.dispose();
    }
    expect(fileHost().kind).toBe('node');
  });
});

describe('yieldToEventLoop', () => {
  it('resumes after other queued tasks when setImmediate is missing (browsers), through a MessageChannel', async () => {
    const scope = globalThis as { setImmediate?: unknown };
    const saved = scope.setImmediate;
    const order: string[] = [];
    scope.setImmediate = undefined;
    try {
      queueMicrotask(() => order.push('microtask'));
      await yieldToEventLoop();
      order.push('resumed');
    } finally {
      scope.setImmediate = saved;
    }
    expect(order).toEqual(['microtask', 'resumed']);
  });
});
