import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import {
  AdamW,
  AdapterModel,
  CheckpointError,
  ConfigError,
  Linear,
  Module,
  ShapeError,
  createLoraRegistry,
  initRuntime,
  lora,
  train,
  type SafetensorsEntry,
} from '@lora/core';
import { withoutTensorLeaks } from '@lora/core/testing';
import { beforeAll, describe, expect, it } from 'vitest';
import { AdamW8bit, DYNAMIC_MAP_SIGNED, DYNAMIC_MAP_UNSIGNED, measurePeakTensorBytes, memoryReport, quant, type QuantLinear } from '../src/index.js';
import { TinyMlp } from './helpers.js';

beforeAll(async () => {
  await initRuntime();
});

function qlora(seed = 2): AdapterModel<TinyMlp> {
  const registry = createLoraRegistry({ plugins: [lora({ seed: 4 }), quant()] });
  return AdapterModel.create(new TinyMlp({ inFeatures: 24, hidden: 64, seed }), {
    registry,
    config: { r: 8, loraAlpha: 16, targetModules: ['fc1', 'proj'] },
    transforms: ['quant'],
  });
}

function batches(count: number): { x: tf.Tensor2D; y: tf.Tensor2D }[] {
  return Array.from({ length: count }, (_, i) => ({
    x: tf.randomNormal([8, 24], 0, 1, 'float32', 100 + i) as tf.Tensor2D,
    y: tf.randomNormal([8, 6], 0, 1, 'float32', 200 + i) as tf.Tensor2D,
  }));
}

const mse = (model: TinyMlp) => (batch: { x: tf.Tensor2D; y: tf.Tensor2D }): tf.Scalar =>
  tf.tidy(() => tf.mean(tf.square(tf.sub(model.forward(batch.x), batch.y))) as tf.Scalar);

describe('QLoRA training', () => {
  it('runs 50 steps with core train() without leaking tensors, and lowers the loss', async () => {
    const data = batches(4);
    await withoutTensorLeaks(async () => {
      const peft = qlora();
      const bytesBefore = peft.adapterLayers().map(([, layer]) => Buffer.from((layer.base_layer as QuantLinear).quantState.packed));
      const result = await train({ model: peft.model, lossFn: mse(peft.model), trainData: data, steps: 50, learningRate: 1e-2 });
      expect(result.losses.length).toBe(50);
      expect(result.losses[49]!).toBeLessThan(result.losses[0]!);
      // The 4-bit base is frozen: its bytes never change.
      peft.adapterLayers().forEach(([, layer], i) => expect(Buffer.from((layer.base_layer as QuantLinear).quantState.packed).equals(bytesBefore[i]!)).toBe(true));
      peft.dispose();
    });
    tf.dispose(data.flatMap((b) => [b.x, b.y]));
  });

  it("trains with AdamW8bit through core's train({ optimizer })", async () => {
    const data = batches(4);
    await withoutTensorLeaks(async () => {
      const peft = qlora();
      const optimizer = new AdamW8bit({ learningRate: 1e-2, weightDecay: 0, minQuantizedSize: 0 });
      const result = await train({ model: peft.model, lossFn: mse(peft.model), trainData: data, steps: 30, optimizer });
      expect(optimizer.step).toBe(30);
      expect(result.losses[29]!).toBeLessThan(result.losses[0]!);
      optimizer.dispose();
      peft.dispose();
    });
    tf.dispose(data.flatMap((b) => [b.x, b.y]));
  });

  it.each([0, 4096])('resumes AdamW8bit from a trainer checkpoint to the same weights (minQuantizedSize %i)', async (minQuantizedSize) => {
    const data = batches(4);
    const directory = await mkdtemp(path.join(tmpdir(), 'quant-adam8-resume-'));
    const run = async (options: { stopAt?: number; checkpoint?: boolean }) => {
      const peft = qlora();
      const optimizer = new AdamW8bit({ learningRate: 1e-2, weightDecay: 0, minQuantizedSize });
      try {
        await train({
          model: peft.model,
          lossFn: mse(peft.model),
          trainData: data,
          steps: 8,
          optimizer,
          checkpoint: options.checkpoint ? { directory, every: 2 } : undefined,
          onProgress: (event) => {
            if (event.step === options.stopAt) throw new Error('interrupted');
          },
        }).catch((error: Error) => {
          if (error.message !== 'interrupted') throw error;
        });
        return peft.model.namedParameters().filter(([, v]) => v.trainable).map(([name, v]) => [name, v.dataSync().slice()] as const);
      } finally {
        optimizer.dispose();
        peft.dispose();
      }
    };
    try {
      const straight = await run({});
      await run({ stopAt: 5, checkpoint: true });
      const resumed = await run({ checkpoint: true });
      expect(resumed.map(([name]) => name)).toEqual(straight.map(([name]) => name));
      resumed.forEach(([, values], i) => expect(Buffer.from(values.buffer).equals(Buffer.from(straight[i]![1].buffer))).toBe(true));
    } finally {
      await rm(directory, { recursive: true, force: true });
      tf.dispose(data.flatMap((b) => [b.x, b.y]));
    }
  });

  it('runs 50 steps with AdamW8bit in a custom loop without leaking tensors', async () => {
    const data = batches(4);
    await withoutTensorLeaks(() => {
      const peft = qlora();
      const optimizer = new AdamW8bit({ learningRate: 1e-2, weightDecay: 0, minQuantizedSize: 0 });
      const variables = peft.model.trainableVariables();
      const lossFn = mse(peft.model);
      const losses: number[] = [];
      for (let step = 0; step < 50; step++) {
        const { value, grads } = tf.variableGrads(() => lossFn(data[step % data.length]!), variables);
        losses.push(value.dataSync()[0]!);
        optimizer.applyGradients(new Map(variables.map((variable) => [variable, grads[variable.name]!] as const)));
        tf.dispose([value, ...Object.values(grads)]);
      }
      expect(losses[49]!).toBeLessThan(losses[0]!);
      optimizer.dispose();
      peft.dispose();
    });
    tf.dispose(data.flatMap((b) => [b.x, b.y]));
  });
});

describe('AdamW8bit', () => {
  it('tracks float32 AdamW closely and stores ≈ 2 bytes per parameter instead of 8', async () => {
    await withoutTensorLeaks(() => {
      const target = tf.randomNormal([64, 128], 0, 1, 'float32', 1);
      const start = tf.randomNormal([64, 128], 0, 1, 'float32', 2);
      const a = tf.variable(start);
      const b = tf.variable(start);
      const full = new AdamW({ learningRate: 1e-2, weightDecay: 0.01 });
      const eight = new AdamW8bit({ learningRate: 1e-2, weightDecay: 0.01 });
      for (let step = 0; step < 30; step++) {
        for (const [variable, optimizer] of [[a, full], [b, eight]] as const) {
          const { value, grads } = tf.variableGrads(() => tf.sum(tf.mul(tf.square(tf.sub(variable, target)), 0.5)) as tf.Scalar, [variable]);
          optimizer.applyGradients(new Map([[variable, grads[variable.name]!]]));
          tf.dispose([value, ...Object.values(grads)]);
        }
      }
      // 8-bit moments follow the float32 trajectory up to quantization noise (a few % of the distance travelled)
      // and reach the same loss.
      const relative = tf.tidy(() => tf.div(tf.norm(tf.sub(a, b)), tf.norm(tf.sub(a, start))).dataSync()[0]!);
      expect(relative).toBeLessThan(0.05);
      const [lossFull, lossEight] = [a, b].map((variable) => tf.tidy(() => tf.sum(tf.square(tf.sub(variable, target))).dataSync()[0]!));
      expect(Math.abs(lossEight! - lossFull!) / lossFull!).toBeLessThan(0.01);
      const bytes = eight.stateBytes();
      expect(bytes.parameters).toBe(64 * 128);
      expect(bytes.float32).toBe(0);
      expect(bytes.total / bytes.parameters).toBeCloseTo(2 + 8 / 256, 6); // 2.03 B/param vs 8
      console.log(`AdamW8bit after 30 steps: parameter drift vs float32 AdamW ${relative.toExponential(2)} of the distance travelled; loss ${lossEight!.toFixed(2)} vs ${lossFull!.toFixed(2)}; ${(bytes.total / bytes.parameters).toFixed(4)} B/param`);
      tf.dispose([target, start]);
      a.dispose();
      b.dispose();
      full.dispose();
      eight.dispose();
    });
  });

  it('stores the nearest 8-bit codes of the updated moments after one step (independent reference)', async () => {
    await withoutTensorLeaks(() => {
      const variable = tf.tidy(() => tf.variable(tf.randomNormal([300], 0, 1, 'float32', 5)));
      const gradient = tf.randomNormal([300], 0, 1, 'float32', 6);
      const optimizer = new AdamW8bit({ minQuantizedSize: 0, blockSize: 256 });
      optimizer.applyGradients(new Map([[variable, gradient]]));
      const g = gradient.dataSync();
      const moments = optimizer.momentsOf(variable)!;
      const m = moments.m.dataSync();
      const v = moments.v.dataSync();
      // Reference: m = 0.1·g, v = 0.001·g², then per block of 256 the nearest map entry times the block absmax.
      for (const [values, beta, map, square] of [[m, 0.1, DYNAMIC_MAP_SIGNED, false], [v, 0.001, DYNAMIC_MAP_UNSIGNED, true]] as const) {
        for (let block = 0; block < 2; block++) {
          const exact = Array.from(g.slice(block * 256, block * 256 + 256), (x) => (square ? x * x : x) * beta);
          const absmax = Math.max(...exact.map(Math.abs));
          exact.forEach((x, i) => {
            const nearest = Math.min(...Array.from(map, (entry) => Math.abs(entry * absmax - x)));
            expect(Math.abs(values[block * 256 + i]! - x)).toBeLessThanOrEqual(nearest + 1e-6 * absmax);
          });
        }
      }
      tf.dispose([gradient, moments.m, moments.v]);
      variable.dispose();
      optimizer.dispose();
    });
  });

  it('keeps float32 moments for variables under minQuantizedSize (default 4096, as bitsandbytes)', async () => {
    await withoutTensorLeaks(() => {
      const small = tf.tidy(() => tf.variable(tf.ones([10, 10])));
      const optimizer = new AdamW8bit();
      const gradient = tf.onesLike(small);
      optimizer.applyGradients(new Map([[small, gradient]]));
      expect(optimizer.stateBytes()).toMatchObject({ quantized: 0, float32: 800, parameters: 100 });
      tf.dispose([gradient]);
      small.dispose();
      optimizer.dispose();
    });
  });

  it('rejects invalid options with a ConfigError naming the field', () => {
    expect(() => new AdamW8bit({ beta1: 1 })).toThrow(ConfigError);
    expect(() => new AdamW8bit({ blockSize: 0 })).toThrow(/blockSize/u);
  });

  it("rejects PyTorch's option names, naming the option to use, and options that are not numbers", () => {
    const errorOf = (options: unknown): ConfigError => {
      try {
        new AdamW8bit(options as ConstructorParameters<typeof AdamW8bit>[0]);
      } catch (error) {
        expect(error).toBeInstanceOf(ConfigError);
        expect((error as Error).message).not.toContain('\n');
        return error as ConfigError;
      }
      throw new Error(`expected ${JSON.stringify(options)} to be rejected`);
    };
    expect(errorOf({ lr: 0.1 })).toMatchObject({ field: 'lr', message: expect.stringContaining('pass { learningRate: 0.1 }') });
    expect(errorOf({ learningRate: 0.1, betas: [0.9, 0.99] })).toMatchObject({ field: 'betas', message: expect.stringContaining('pass { beta1: 0.9, beta2: 0.99 }') });
    expect(errorOf({ eps: 1e-6 })).toMatchObject({ field: 'eps', message: expect.stringContaining('pass { epsilon: 0.000001 }') });
    expect(errorOf({ weight_decay: 0 })).toMatchObject({ field: 'weight_decay', message: expect.stringContaining('pass { weightDecay: 0 }') });
    expect(errorOf({ learningrate: 0.1 })).toMatchObject({ field: 'learningrate', message: expect.stringContaining('Remove it or fix its spelling') });
    expect(errorOf({ beta1: '0.9' })).toMatchObject({ field: 'beta1', expected: 'a number' });
    expect(errorOf({ blockSize: '256' })).toMatchObject({ field: 'blockSize', expected: 'a number' });
    expect(errorOf(null)).toMatchObject({ field: 'options' });
    expect(new AdamW8bit({ learningRate: 0.1, beta1: undefined }).learningRate).toBe(0.1);
  });

  it('throws a ShapeError naming the variable for a gradient of the wrong shape, changing nothing', async () => {
    await withoutTensorLeaks(() => {
      const [good, bad] = tf.tidy(() => [tf.variable(tf.zeros([300]), true, 'good'), tf.variable(tf.zeros([300]), true, 'bad')]);
      const gradients = new Map<tf.Variable, tf.Tensor>([
        [good, tf.ones([300])],
        [bad, tf.ones([10])],
      ]);
      const optimizer = new AdamW8bit({ minQuantizedSize: 0 });
      expect(() => optimizer.applyGradients(gradients)).toThrow(ShapeError);
      expect(() => optimizer.applyGradients(gradients)).toThrow(/the gradient of variable "bad".*expected shape \[300\], got \[10\]/u);
      expect(optimizer.step).toBe(0);
      expect(optimizer.stateBytes().total).toBe(0);
      expect(Math.max(...good.dataSync())).toBe(0);
      tf.dispose([...gradients.values(), good, bad]);
      optimizer.dispose();
    });
  });
});

describe('AdamW8bit.loadStateEntries', () => {
  /** State after two steps of `optimizer` on a 600- and a 100-element variable, checkpointed as `big` and `small`. */
  function stateOf(optimizer: AdamW): Map<string, SafetensorsEntry> {
    const [big, small] = tf.tidy(() => [tf.variable(tf.zeros([600])), tf.variable(tf.zeros([100]))]);
    for (let step = 0; step < 2; step++) {
      const gradients = new Map<tf.Variable, tf.Tensor>([
        [big, tf.randomNormal([600], 0, 1, 'float32', 10 + step)],
        [small, tf.randomNormal([100], 0, 1, 'float32', 20 + step)],
      ]);
      optimizer.applyGradients(gradients);
      tf.dispose([...gradients.values()]);
    }
    const entries = optimizer.stateEntries(new Map([[big, 'big'], [small, 'small']]));
    optimizer.dispose();
    tf.dispose([big, small]);
    return entries;
  }

  function loadInto(options: ConstructorParameters<typeof AdamW8bit>[0], entries: ReadonlyMap<string, SafetensorsEntry>): { error: unknown; stateBytes: number; entries: Map<string, SafetensorsEntry> } {
    const [big, small] = tf.tidy(() => [tf.variable(tf.zeros([600])), tf.variable(tf.zeros([100]))]);
    const names = new Map([[big, 'big'], [small, 'small']]);
    const optimizer = new AdamW8bit(options);
    let error: unknown;
    try {
      optimizer.loadStateEntries(entries, names);
    } catch (caught) {
      error = caught;
    }
    const result = { error, stateBytes: optimizer.stateBytes().total, entries: optimizer.stateEntries(names) };
    optimizer.dispose();
    tf.dispose([big, small]);
    return result;
  }

  it('restores state written with the same settings exactly', async () => {
    await withoutTensorLeaks(() => {
      for (const minQuantizedSize of [0, 200]) {
        const written = stateOf(new AdamW8bit({ minQuantizedSize, blockSize: 64 }));
        const { error, entries } = loadInto({ minQuantizedSize, blockSize: 64 }, written);
        expect(error).toBeUndefined();
        expect([...entries.keys()].sort()).toEqual([...written.keys()].sort());
        for (const [key, entry] of written) expect(Buffer.from(entries.get(key)!.data).equals(Buffer.from(entry.data)), key).toBe(true);
      }
    });
  });

  it.each([
    ['with blockSize 64, resumed with 256', () => new AdamW8bit({ minQuantizedSize: 0, blockSize: 64 }), { minQuantizedSize: 0, blockSize: 256 }, /"adam8_m_absmax\.big" is F32 with 10 values, expected F32 with 3 \(one absmax per block of 256 .*another blockSize/u],
    ['with blockSize 256, resumed with 64', () => new AdamW8bit({ minQuantizedSize: 0, blockSize: 256 }), { minQuantizedSize: 0, blockSize: 64 }, /"adam8_m_absmax\.big" is F32 with 3 values, expected F32 with 10/u],
    ['by float AdamW', () => new AdamW(), { minQuantizedSize: 0 }, /"adam_m\.big" holds float32 moments .*minQuantizedSize = 0 elements and "big" has 600/u],
    ['with minQuantizedSize 0, resumed with the default', () => new AdamW8bit({ minQuantizedSize: 0 }), {}, /"adam8_m\.big" holds 8-bit moments .*under minQuantizedSize = 4096 elements/u],
    ['with minQuantizedSize 4096, resumed with 200', () => new AdamW8bit(), { minQuantizedSize: 200 }, /"adam_m\.big" holds float32 moments/u],
  ] as const)('refuses state written %s with a CheckpointError naming the key, restoring nothing', async (_label, writer, options, message) => {
    await withoutTensorLeaks(() => {
      const { error, stateBytes } = loadInto(options, stateOf(writer()));
      expect(error).toBeInstanceOf(CheckpointError);
      expect((error as Error).message).toMatch(/^\[@lora\/quant\] Cannot restore AdamW8bit state: checkpoint key /u);
      expect((error as Error).message).toMatch(message);
      expect((error as Error).message).toMatch(/or pass resume: false to start over\.$/u);
      expect(stateBytes).toBe(0);
    });
  });

  it('refuses an incomplete or mistyped 8-bit state, naming the key', async () => {
    await withoutTensorLeaks(() => {
      const written = stateOf(new AdamW8bit({ minQuantizedSize: 0 }));
      const incomplete = new Map(written);
      incomplete.delete('adam8_v_absmax.small');
      expect(loadInto({ minQuantizedSize: 0 }, incomplete).error).toMatchObject({ missing: ['adam8_v_absmax.small'], message: expect.stringContaining('"adam8_v_absmax.small" is missing') });
      const mistyped = new Map(written);
      const codes = written.get('adam8_m.big')!;
      mistyped.set('adam8_m.big', { dtype: 'F32', shape: [150], data: codes.data });
      expect(loadInto({ minQuantizedSize: 0 }, mistyped).error).toMatchObject({ message: expect.stringContaining('"adam8_m.big" is F32 with 150 values, expected U8 with 600') });
    });
  });

  it("makes train() refuse a checkpoint written with another blockSize with a CheckpointError (was tfjs' RangeError)", async () => {
    const data = batches(2);
    const directory = await mkdtemp(path.join(tmpdir(), 'quant-adam8-mismatch-'));
    const run = async (blockSize: number, resume: boolean) => {
      const peft = qlora();
      const optimizer = new AdamW8bit({ learningRate: 1e-2, minQuantizedSize: 0, blockSize });
      try {
        await train({ model: peft.model, lossFn: mse(peft.model), trainData: data, steps: 4, optimizer, checkpoint: { directory, every: 2 }, resume });
      } finally {
        optimizer.dispose();
        peft.dispose();
      }
    };
    try {
      await run(64, false);
      await expect(run(256, true)).rejects.toThrow(CheckpointError);
      await expect(run(256, true)).rejects.toThrow(/checkpoint key "adam8_m_absmax\.[^"]+" is F32 with \d+ values, expected F32 with \d+/u);
    } finally {
      await rm(directory, { recursive: true, force: true });
      tf.dispose(data.flatMap((b) => [b.x, b.y]));
    }
  });
});

describe('memoryReport / measurePeakTensorBytes', () => {
  it('reports bytes per component and the peak tensor bytes of a training step', async () => {
    const data = batches(1);
    await withoutTensorLeaks(async () => {
      const peft = qlora();
      const optimizer = new AdamW8bit({ minQuantizedSize: 0 });
      const variables = peft.model.trainableVariables();
      const step = (): void => {
        const { value, grads } = tf.variableGrads(() => mse(peft.model)(data[0]!), variables);
        optimizer.applyGradients(new Map(variables.map((variable) => [variable, grads[variable.name]!] as const)));
        tf.dispose([value, ...Object.values(grads)]);
      };
      step();
      const peak = await measurePeakTensorBytes(step);
      const report = memoryReport(peft.model, { optimizer });
      // fc1 [64, 24] and proj [64, 64]: 1536 + 4096 weights.
      expect(report.quantizedLayers).toBe(2);
      expect(report.packedWeights).toBe((1536 + 4096) / 2);
      expect(report.quantState).toBe(24 + 64 + 4 + 4); // 8-bit absmax codes + one nested absmax each
      expect(report.quantTables).toBe(16 * 4 + 256 * 4); // shared by both layers, counted once
      expect(report.float32Equivalent).toBe((1536 + 4096) * 4);
      const adapterParameters = 8 * 24 + 64 * 8 + 8 * 64 + 64 * 8;
      expect(report.adapters).toBe(adapterParameters * 4);
      expect(report.optimizerState).toBe(optimizer.stateBytes().total);
      expect(report.total).toBe(report.packedWeights + report.quantState + report.quantTables + report.adapters + report.otherParameters + report.optimizerState);
      expect(peak.peakBytes).toBeGreaterThan(peak.startBytes);
      expect(peak.endBytes).toBe(peak.startBytes);
      // The transient peak stays below the float32 size of all base weights + activations: weights are dequantized one layer at a time.
      console.log(`${report.summary}\npeak tensor bytes during a step: ${peak.peakBytes} (start ${peak.startBytes}, transient ${peak.transientBytes})`);
      optimizer.dispose();
      peft.dispose();
    });
    tf.dispose(data.flatMap((b) => [b.x, b.y]));
  });
});

class Deep extends Module {
  readonly layers: Linear[];

  constructor() {
    super();
    this.layers = Array.from({ length: 6 }, (_, i) => this.registerModule(`l${i}`, new Linear({ inFeatures: 256, outFeatures: 256, seed: i })));
  }

  forward(x: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.layers.reduce<tf.Tensor>((h, _, i) => tf.tanh((this.getSubmodule(`l${i}`) as unknown as Linear).forward(h)), x));
  }
}

describe('one layer dequantized at a time', () => {
  it('keeps the transient tensor bytes of a QLoRA training step under two float32 weights, for six 4-bit layers', async () => {
    await withoutTensorLeaks(async () => {
      const registry = createLoraRegistry({ plugins: [lora({ seed: 1 }), quant()] });
      const peft = AdapterModel.create(new Deep(), { registry, config: { r: 4, targetModules: 'all-linear' }, transforms: ['quant'] });
      const x = tf.randomNormal([1, 256], 0, 1, 'float32', 1);
      const variables = peft.model.trainableVariables();
      const step = (): void => {
        const { value, grads } = tf.variableGrads(() => tf.sum(tf.square(peft.model.forward(x))) as tf.Scalar, variables);
        tf.dispose([value, ...Object.values(grads)]);
      };
      const { transientBytes } = await measurePeakTensorBytes(step);
      const layerBytes = 256 * 256 * 4;
      console.log(`transient peak of a forward+backward over 6 4-bit layers: ${transientBytes} B (one float32 weight = ${layerBytes} B)`);
      // A tape that kept every dequantized weight for the backward pass would need ≥ 6 · layerBytes.
      expect(transientBytes).toBeLessThan(2 * layerBytes);
      x.dispose();
      peft.dispose();
    });
  });
});
