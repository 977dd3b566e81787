import { describeAdapterPlugin } from '@lora/core/testing';
import { describe } from 'vitest';
import { quant } from '@lora/quant';
import { dora, doubleLora } from '../src/index.js';

describe('dora() (weight-decomposed)', () => {
  describeAdapterPlugin(dora({ seed: 4 }), {
    withSeed: (seed) => dora({ seed }),
    validConfig: { r: 4, loraAlpha: 8, targetModules: ['query', 'conv'], loraDropout: 0.1 },
    invalidConfigs: [
      { r: 0 },
      { r: 2.5 },
      { loraDropout: 1 },
      { bias: 'some' },
      { targetModules: 'x', layersToTransform: [0] },
      { rr: 4 },
      { useDora: false },
      { loraBias: true },
    ],
  });
});

describe('doubleLora()', () => {
  describeAdapterPlugin(doubleLora({ seed: 4 }), {
    withSeed: (seed) => doubleLora({ seed }),
    validConfig: { r1: 4, loraAlpha1: 8, r2: 2, loraAlpha2: 1, loraDropout2: 0.1, targetModules: ['query', 'conv'] },
    invalidConfigs: [{ r1: 0 }, { r2: 1.5 }, { loraAlpha2: -1 }, { loraDropout1: 1 }, { r: 8 }, { bias: 'some' }],
  });
});

// v2 compatibility: any adapter wraps any dense base layer, so DoRA and the double mode compose with the 4-bit base.
describe('dora() on a 4-bit base (QDoRA)', () => {
  describeAdapterPlugin(dora({ seed: 4 }), {
    validConfig: { r: 4, loraAlpha: 8, targetModules: ['query', 'conv'] },
    invalidConfigs: [{ r: 0 }],
    extraPlugins: [quant({ merge: 'dequantize' })],
    transforms: ['quant'],
  });
});

describe('doubleLora() on a 4-bit base', () => {
  describeAdapterPlugin(doubleLora({ seed: 4 }), {
    validConfig: { r1: 4, loraAlpha1: 8, r2: 2, loraAlpha2: 1, targetModules: ['query', 'conv'] },
    invalidConfigs: [{ r1: 0 }],
    extraPlugins: [quant({ merge: 'dequantize' })],
    transforms: ['quant'],
  });
});
