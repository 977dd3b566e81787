import type { AdapterPlugin } from '@lora/core';
import { describeAdapterPlugin } from '@lora/core/testing';
import { quant } from '@lora/quant';
import { describe } from 'vitest';
import { hyper, HyperLoraState, type HyperLoraConfig } from '../src/index.js';
import { INVALID_CONFIGS, TASKS } from './helpers.js';

const validConfig = { r: 4, loraAlpha: 8, targetModules: ['query', 'conv'], condition: TASKS, trunkWidth: 8, basisSize: 3 };
const invalidConfigs = INVALID_CONFIGS.map(([config]) => config);

/**
 * The plugin with a default condition ({ task: 'b' }) set on every adapter it creates: core's suite
 * runs `model.forward(x)` without adapter inputs, which a HyperLoRA refuses unless it has a default.
 */
function withDefaultCondition(plugin: AdapterPlugin<HyperLoraConfig>): AdapterPlugin<HyperLoraConfig> {
  return {
    ...plugin,
    createAdapterState(context) {
      const state = plugin.createAdapterState!(context);
      if (!(state instanceof HyperLoraState)) throw new Error('hyper() did not create a HyperLoraState');
      state.setDefaultCondition({ task: 'b' });
      return state;
    },
  };
}

describe('hyper()', () => {
  for (const headMode of ['full', 'basis', 'diag'] as const) {
    describe(headMode, () => {
      describeAdapterPlugin(withDefaultCondition(hyper({ seed: 4 })), {
        validConfig: { ...validConfig, headMode },
        invalidConfigs,
        refusesMerge: true,
        withSeed: (seed) => withDefaultCondition(hyper({ seed })),
      });
    });
  }
});

describe('hyper() over a 4-bit base', () => {
  describeAdapterPlugin(withDefaultCondition(hyper({ seed: 4 })), {
    validConfig,
    invalidConfigs,
    extraPlugins: [quant({ merge: 'dequantize' })],
    transforms: ['quant'],
    refusesMerge: true,
  });
});
