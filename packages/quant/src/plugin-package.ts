import { definePluginPackage } from '@lora/core';
import { quant } from './quant-plugin.js';

/** What `@lora/quant` provides: the 4-bit base transform `quant` (QLoRA = `quant` + LoRA). */
export const pluginPackage = definePluginPackage({
  packageName: '@lora/quant',
  plugins: [
    { name: 'quant', kind: 'base-transform', peftTypes: [], summary: 'frozen base stored in 4-bit NF4/FP4 (double-quantized), adapters trained beside it in float32', create: quant },
  ],
});
