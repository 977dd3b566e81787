import { lora } from '@lora/core';
import { describeAdapterPlugin } from '@lora/core/testing';
import { describe } from 'vitest';
import { quant } from '../src/index.js';

const validConfig = { r: 4, loraAlpha: 8, targetModules: ['query', 'conv'] };
const invalidConfigs = [{ r: 0 }, { loraDropout: 1.5 }];

// QLoRA with merge mode 'dequantize': merged forward ≡ unmerged forward at core's default tolerance.
describe("QLoRA, merge: 'dequantize'", () => {
  describeAdapterPlugin(lora({ seed: 5 }), {
    withSeed: (seed) => lora({ seed }),
    validConfig,
    invalidConfigs,
    extraPlugins: [quant({ merge: 'dequantize' })],
    transforms: ['quant'],
  });
});

// QLoRA with the default merge (re-quantize to NF4): merged outputs differ by the re-quantization error.
// The conformance tree's weights are ~U(-0.3, 0.3) and its random adapters add ΔW of order 0.3, so merged
// blocks have absmax up to ~1.2 and NF4 moves each weight by up to 0.152·absmax; the largest output
// difference measured is 0.15, allowed 0.3. Unmerge must still restore the exact bytes (checked at 1e-5).
describe("QLoRA, merge: 'requantize' (default)", () => {
  describeAdapterPlugin(lora({ seed: 5 }), {
    withSeed: (seed) => lora({ seed }),
    validConfig,
    invalidConfigs,
    extraPlugins: [quant()],
    transforms: ['quant'],
    mergeTolerance: { atol: 0.3, rtol: 0 },
  });
});
