import { describeAdapterPlugin } from '@lora/core/testing';
import { quant } from '@lora/quant';
import { describe } from 'vitest';
import { hyper } from '../src/index.js';
import { INVALID_CONFIGS, TASKS } from './helpers.js';

const validConfig = { r: 4, loraAlpha: 8, targetModules: ['query', 'conv'], condition: TASKS, trunkWidth: 8, basisSize: 3 };
const invalidConfigs = INVALID_CONFIGS.map(([config]) => config);

describe('hyper()', () => {
  for (const headMode of ['full', 'basis', 'diag'] as const) {
    describe(headMode, () => {
      describeAdapterPlugin(hyper({ seed: 4 }), { validConfig: { ...validConfig, headMode }, invalidConfigs, refusesMerge: true, withSeed: (seed) => hyper({ seed }) });
    });
  }
});

describe('hyper() over a 4-bit base', () => {
  describeAdapterPlugin(hyper({ seed: 4 }), { validConfig, invalidConfigs, extraPlugins: [quant({ merge: 'dequantize' })], transforms: ['quant'], refusesMerge: true });
});
