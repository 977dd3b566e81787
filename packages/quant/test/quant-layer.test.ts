import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, ConfigError, Linear, createLoraRegistry, initRuntime, lora } from '@lora/core';
import { spyOnKernels } from '@lora/core/internal';
import { expectTensorsClose, runSuiteOnBackend, withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { QuantLinear, dequantizeWeight, mergeAndDequantize, quant, quantizeModel, quantizeWeight, dequantizeModel } from '../src/index.js';
import { TinyMlp, maxAbsDifference } from './helpers.js';

beforeAll(async () => {
  await initRuntime();
});

function denseReference(layer: QuantLinear, x: tf.Tensor2D): tf.Tensor {
  return tf.tidy(() => {
    const w = tf.tensor2d(dequantizeWeight(layer.quantState), [layer.outFeatures, layer.inFeatures]);
    const y = tf.matMul(x, w, false, true);
    return layer.bias ? tf.add(y, layer.bias) : y;
  });
}

function qloraModel(options: Parameters<typeof quant>[0] = {}): AdapterModel<TinyMlp> {
  const registry = createLoraRegistry({ plugins: [lora({ seed: 3 }), quant(options)] });
  const model = AdapterModel.create(new TinyMlp({ seed: 2 }), {
    registry,
    config: { r: 4, loraAlpha: 8, targetModules: ['fc1', 'proj'], initLoraWeights: false },
    transforms: ['quant'],
  });
  model.model.eval();
  return model;
}

describe('QuantLinear', () => {
  it('computes x·dequant(W)ᵀ + b, for inputs of any rank', async () => {
    await withoutTensorLeaks(() => {
      const source = new Linear({ inFeatures: 70, outFeatures: 9, seed: 4 });
      const layer = QuantLinear.fromLayer(source, { type: 'nf4' });
      const x = tf.randomNormal([5, 70], 0, 1, 'float32', 1);
      const y = layer.forward(x);
      const reference = denseReference(layer, x as tf.Tensor2D);
      expectTensorsClose(y, reference, { atol: 1e-5, rtol: 1e-5 });
      const x3 = tf.reshape(x, [5, 1, 70]);
      const y3 = layer.forward(x3);
      expect(y3.shape).toEqual([5, 1, 9]);
      const noBias = layer.forwardWithoutBias(x);
      const withBias = tf.add(noBias, layer.bias!);
      expectTensorsClose(withBias, y, { atol: 1e-6, rtol: 1e-6 });
      tf.dispose([x, y, reference, x3, y3, noBias, withBias]);
      source.dispose();
      layer.dispose();
    });
  });

  it('refuses a forward pass after dispose() with a LoraError naming the layer, with or without a bias', async () => {
    await withoutTensorLeaks(() => {
      for (const bias of [true, false]) {
        const source = new Linear({ inFeatures: 64, outFeatures: 8, bias, seed: 4 });
        const layer = QuantLinear.fromLayer(source, { type: 'nf4', name: 'mlp.fc1' });
        source.dispose();
        layer.dispose();
        const x = tf.ones([2, 64]);
        const disposed = /^\[@lora\/quant\] QuantLinear "mlp\.fc1": this layer was disposed \(with its model or AdapterModel\), its weights freed\./u;
        expect(() => layer.forward(x)).toThrow(disposed);
        expect(() => layer.forwardWithoutBias(x)).toThrow(disposed);
        x.dispose();
      }
    });
  });

  it('holds packed bytes, not a float32 weight: its only tensor is the bias, and forward frees the dequantized weight', async () => {
    await withoutTensorLeaks(() => {
      const source = new Linear({ inFeatures: 256, outFeatures: 128, seed: 9 });
      const before = tf.memory().numBytes;
      const layer = QuantLinear.fromLayer(source, { type: 'nf4', doubleQuant: true });
      // Only the bias (128 floats) became a tensor.
      expect(tf.memory().numBytes - before).toBe(128 * 4);
      expect(layer.namedParameters().map(([name]) => name)).toEqual(['bias']);
      expect(layer.quantState.packed).toBeInstanceOf(Uint8Array);
      expect(layer.quantState.packed.byteLength).toBe((256 * 128) / 2);
      const x = tf.ones([2, 256]);
      const afterInput = tf.memory().numBytes;
      const y = layer.forward(x);
      // Only the output remains.
      expect(tf.memory().numBytes - afterInput).toBe(2 * 128 * 4);
      tf.dispose([x, y]);
      source.dispose();
      layer.dispose();
    });
  });

  it('passes gradients to the input through the dequantized weight, none to the packed weight', async () => {
    await withoutTensorLeaks(() => {
      const source = new Linear({ inFeatures: 33, outFeatures: 7, seed: 6 });
      const layer = QuantLinear.fromLayer(source, { type: 'fp4', doubleQuant: false });
      const x = tf.randomNormal([4, 33], 0, 1, 'float32', 2);
      const upstream = tf.randomNormal([4, 7], 0, 1, 'float32', 3);
      const gradient = tf.grad((input: tf.Tensor) => tf.sum(tf.mul(layer.forward(input), upstream)))(x);
      const expected = tf.tidy(() => tf.matMul(upstream, tf.tensor2d(dequantizeWeight(layer.quantState), [7, 33])));
      expectTensorsClose(gradient, expected, { atol: 1e-5, rtol: 1e-5 });
      expect(layer.trainableVariables()).toEqual([]);
      tf.dispose([x, upstream, gradient, expected]);
      source.dispose();
      layer.dispose();
    });
  });

  describe.each(['wasm', 'cpu'])('on the %s backend', (backend) => {
    runSuiteOnBackend(backend);

    it('dequantizes its weight to the float32 values of dequantizeWeight bit for bit (NF4 double-quantized, FP4, odd sizes)', async () => {
      await withoutTensorLeaks(() => {
        for (const [inFeatures, outFeatures, options] of [
          [256, 96, { type: 'nf4', doubleQuant: true }],
          [70, 9, { type: 'fp4', doubleQuant: false }],
          [33, 7, { type: 'nf4', blockSize: 128 }],
        ] as const) {
          const source = new Linear({ inFeatures, outFeatures, seed: inFeatures });
          const layer = QuantLinear.fromLayer(source, options);
          const dense = layer.denseWeight();
          expect(dense.shape).toEqual([outFeatures, inFeatures]);
          expect(Array.from(dense.dataSync())).toEqual(Array.from(dequantizeWeight(layer.quantState)));
          dense.dispose();
          source.dispose();
          layer.dispose();
        }
      });
    });

    it('adds a frozen bias inside the product (no Add over the output), a trainable one by an Add that gives its gradient', async () => {
      await withoutTensorLeaks(() => {
        const source = new Linear({ inFeatures: 40, outFeatures: 24, seed: 7 });
        const layer = QuantLinear.fromLayer(source, { type: 'nf4' });
        const x = tf.randomNormal([6, 40], 0, 1, 'float32', 4);
        const upstream = tf.randomNormal([6, 24], 0, 1, 'float32', 5);
        const reference = denseReference(layer, x as tf.Tensor2D);
        const loss = (input: tf.Tensor): tf.Scalar => tf.sum(tf.mul(layer.forward(input), upstream));
        const spy = spyOnKernels();
        const y = layer.forward(x);
        const dx = tf.grad(loss)(x);
        spy.stop();
        const forwardKernels = spy.calls.filter((call) => call.depth === 0).map((call) => call.kernelName);
        expect(forwardKernels).toContain('_FusedMatMul');
        expect(forwardKernels).not.toContain('Add');
        expectTensorsClose(y, reference, { atol: 1e-5, rtol: 1e-5 });
        const expectedDx = tf.tidy(() => tf.matMul(upstream, tf.tensor2d(dequantizeWeight(layer.quantState), [24, 40])));
        expectTensorsClose(dx, expectedDx, { atol: 1e-5, rtol: 1e-5 });
        // A trainable bias (a config training biases) takes the Add, whose gradient reaches it.
        layer.bias!.trainable = true;
        const { value, grads } = tf.variableGrads(() => loss(x), [layer.bias!]);
        const expectedValue = tf.tidy(() => tf.sum(tf.mul(reference, upstream)));
        expectTensorsClose(value, expectedValue, { atol: 1e-4, rtol: 1e-5 });
        const expectedBiasGradient = tf.sum(upstream, 0);
        expectTensorsClose(grads[layer.bias!.name]!, expectedBiasGradient, { atol: 1e-6, rtol: 1e-6 });
        tf.dispose([x, upstream, reference, y, dx, expectedDx, value, expectedValue, expectedBiasGradient, ...Object.values(grads)]);
        source.dispose();
        layer.dispose();
      });
    });
  });

  it('quantizes a Conv1D-layout (fanInFanOut) layer as [out, in] and gives back the same layout', async () => {
    await withoutTensorLeaks(() => {
      const source = new Linear({ inFeatures: 12, outFeatures: 20, fanInFanOut: true, seed: 8 });
      const layer = QuantLinear.fromLayer(source);
      expect(layer.quantState.shape).toEqual([20, 12]);
      expect(layer.fanInFanOut).toBe(false);
      const x = tf.randomNormal([3, 12], 0, 1, 'float32', 4);
      const quantized = layer.forward(x);
      const float = source.forward(x);
      expect(tf.tidy(() => tf.max(tf.abs(tf.sub(quantized, float))).dataSync()[0]!)).toBeLessThan(0.2);
      const back = layer.toLinear();
      expect(back.fanInFanOut).toBe(true);
      expect(back.weight.shape).toEqual([12, 20]);
      const viaLinear = back.forward(x);
      expectTensorsClose(viaLinear, quantized, { atol: 1e-5, rtol: 1e-5 });
      tf.dispose([x, quantized, float, viaLinear]);
      source.dispose();
      layer.dispose();
      back.dispose();
    });
  });
});

describe('QuantLinear.fromLayer / new QuantLinear', () => {
  it("refuses options quant() refuses with the same ConfigError", async () => {
    await withoutTensorLeaks(() => {
      const source = new Linear({ inFeatures: 12, outFeatures: 8, seed: 1 });
      for (const [options, field] of [
        [{ type: 'int4' }, 'type'],
        [{ blockSize: 48 }, 'blockSize'],
        [{ blockSize: 0 }, 'blockSize'],
        [{ merge: 'bogus' }, 'merge'],
        [{ keepOriginalOnMerge: 1 }, 'keepOriginalOnMerge'],
        [{ computeDtype: 'fp16' }, 'computeDtype'],
      ] as const) {
        let caught: unknown;
        try {
          QuantLinear.fromLayer(source, options as unknown as Parameters<typeof QuantLinear.fromLayer>[1]).dispose();
        } catch (error) {
          caught = error;
        }
        expect(caught, JSON.stringify(options)).toBeInstanceOf(ConfigError);
        expect((caught as ConfigError).field).toBe(field);
      }
      source.dispose();
    });
  });

  it('refuses a state whose buffers do not hold a weight of its shape, and an invalid merge mode', async () => {
    await withoutTensorLeaks(() => {
      const state = quantizeWeight(new Float32Array(96).fill(0.5), [8, 12], { doubleQuant: false });
      expect(() => new QuantLinear({ ...state, shape: [10, 12] })).toThrow(/state\.packed\.length must be 60 for shape \[10, 12\]/u);
      expect(() => new QuantLinear({ ...state, blockSize: 48 })).toThrow(/blockSize must be one of 32, 64/u);
      expect(() => new QuantLinear(state, { merge: 'bogus' as 'requantize' })).toThrow(ConfigError);
      const layer = new QuantLinear(state, { merge: 'dequantize' });
      expect(layer.mergeMode).toBe('dequantize');
      layer.dispose();
    });
  });
});

describe('quant() base transform (QLoRA)', () => {
  it('quantizes every linear layer except the output head, and LoRA wraps the 4-bit layers', async () => {
    await withoutTensorLeaks(() => {
      const peft = qloraModel();
      const layers = peft.adapterLayers();
      expect(layers.map(([path]) => path)).toEqual(['fc1', 'proj']);
      for (const [, layer] of layers) expect(layer.base_layer).toBeInstanceOf(QuantLinear);
      expect(peft.model.lm_head).toBeInstanceOf(Linear);
      expect(peft.model.lm_head).not.toBeInstanceOf(QuantLinear);
      const trainable = peft.model.trainableVariables();
      expect(trainable.length).toBe(4); // lora_A / lora_B of two layers
      peft.dispose();
    });
  });

  it('skips the modules named in skipModules (substring match, as transformers)', async () => {
    await withoutTensorLeaks(() => {
      const model = new TinyMlp();
      const replaced = quantizeModel(model, { skipModules: ['proj'] });
      expect(replaced).toEqual(['fc1', 'lm_head']);
      expect(dequantizeModel(model)).toEqual(['fc1', 'lm_head']);
      expect(model.fc1).toBeInstanceOf(Linear);
      model.dispose();
    });
  });
});

describe('merging into a 4-bit base', () => {
  it('re-quantizes (lossy, error measured in the note) and unmerge restores the packed bytes exactly', async () => {
    await withoutTensorLeaks(() => {
      const peft = qloraModel();
      const x = tf.randomNormal([6, 24], 0, 1, 'float32', 5);
      const bases = peft.adapterLayers().map(([, layer]) => layer.base_layer as QuantLinear);
      const originalBytes = bases.map((base) => Buffer.from(base.quantState.packed));
      const originalNested = bases.map((base) => Buffer.from(base.quantState.nested!.codes));
      const unmerged = peft.model.forward(x);
      const notes = peft.merge();
      expect(notes.length).toBe(2);
      expect(notes[0]).toMatch(/re-quantized to nf4 \(lossy\): max \|error\| [\d.e-]+, mean \|error\| [\d.e-]+/u);
      const merged = peft.model.forward(x);
      const difference = maxAbsDifference(merged.dataSync(), unmerged.dataSync());
      expect(difference).toBeGreaterThan(0);
      expect(difference).toBeLessThan(0.5);
      console.log(`requantized merge: max |merged − unmerged output| = ${difference.toExponential(3)}; ${notes[0]}`);
      peft.unmerge();
      bases.forEach((base, i) => {
        expect(Buffer.from(base.quantState.packed).equals(originalBytes[i]!)).toBe(true);
        expect(Buffer.from(base.quantState.nested!.codes).equals(originalNested[i]!)).toBe(true);
      });
      const again = peft.model.forward(x);
      expect(maxAbsDifference(again.dataSync(), unmerged.dataSync())).toBeLessThan(1e-5);
      tf.dispose([x, unmerged, merged, again]);
      peft.dispose();
    });
  });

  it('restores the original bytes after merging two adapters and unmerging both', async () => {
    await withoutTensorLeaks(() => {
      const peft = qloraModel();
      peft.addAdapter('second', { config: { r: 2, targetModules: ['fc1', 'proj'], initLoraWeights: false } });
      peft.setAdapter(['default', 'second']);
      const base = peft.adapterLayers()[0]![1].base_layer as QuantLinear;
      const original = Buffer.from(base.quantState.packed);
      peft.merge();
      peft.unmerge();
      expect(Buffer.from(base.quantState.packed).equals(original)).toBe(true);
      peft.dispose();
    });
  });

  it('with keepOriginalOnMerge: false, unmerge re-quantizes again (PEFT behaviour, not exact)', async () => {
    await withoutTensorLeaks(() => {
      const peft = qloraModel({ keepOriginalOnMerge: false });
      const base = peft.adapterLayers()[0]![1].base_layer as QuantLinear;
      const original = Buffer.from(base.quantState.packed);
      peft.merge();
      peft.unmerge();
      expect(Buffer.from(base.quantState.packed).equals(original)).toBe(false);
      peft.dispose();
    });
  });

  it("merge: 'dequantize' holds the merged weight in float32 (exact) and returns to the same 4-bit bytes", async () => {
    await withoutTensorLeaks(() => {
      const peft = qloraModel({ merge: 'dequantize' });
      const x = tf.randomNormal([6, 24], 0, 1, 'float32', 5);
      const base = peft.adapterLayers()[0]![1].base_layer as QuantLinear;
      const original = Buffer.from(base.quantState.packed);
      const unmerged = peft.model.forward(x);
      expect(peft.merge()).toEqual([]);
      expect(base.holdsFloatWeight).toBe(true);
      const merged = peft.model.forward(x);
      expectTensorsClose(merged, unmerged, { atol: 1e-5, rtol: 1e-5 });
      peft.unmerge();
      expect(base.holdsFloatWeight).toBe(false);
      expect(Buffer.from(base.quantState.packed).equals(original)).toBe(true);
      tf.dispose([x, unmerged, merged]);
      peft.dispose();
    });
  });

  it('mergeAndUnload without dequantize hands each lossy re-quantization note to onNote, after the unload', async () => {
    await withoutTensorLeaks(() => {
      const peft = qloraModel();
      const notes: string[] = [];
      const model = peft.mergeAndUnload({ onNote: (note) => notes.push(note) });
      expect(notes).toHaveLength(2);
      for (const note of notes) expect(note).toMatch(/re-quantized to nf4 \(lossy\): max \|error\| [\d.e-]+, mean \|error\| [\d.e-]+/u);
      expect(model.fc1).toBeInstanceOf(QuantLinear);
      model.dispose();
      // A callback that throws finds the model already unloaded.
      const again = qloraModel();
      const plain = again.model;
      expect(() => again.mergeAndUnload({ onNote: () => { throw new Error('stop'); } })).toThrow('stop');
      expect(plain.fc1).toBeInstanceOf(QuantLinear);
      plain.dispose();
      // A float base merges exactly: no note.
      const exact: string[] = [];
      const dequantized = qloraModel().mergeAndUnload({ dequantize: true, onNote: (note) => exact.push(note) });
      expect(exact).toEqual([]);
      dequantized.dispose();
    });
  });

  it('mergeAndDequantize gives a float model computing dequant(W4) + ΔW exactly', async () => {
    await withoutTensorLeaks(() => {
      const peft = qloraModel();
      const x = tf.randomNormal([6, 24], 0, 1, 'float32', 5);
      const expected = peft.model.forward(x);
      const model = mergeAndDequantize(peft);
      expect(model.fc1).toBeInstanceOf(Linear);
      expect(model.fc1).not.toBeInstanceOf(QuantLinear);
      expect(model.proj.fanInFanOut).toBe(true);
      expect(model.namedModules().some(([, module]) => module instanceof QuantLinear)).toBe(false);
      const actual = model.forward(x);
      expectTensorsClose(actual, expected, { atol: 1e-5, rtol: 1e-4 });
      tf.dispose([x, expected, actual]);
      model.dispose();
    });
  });
});
