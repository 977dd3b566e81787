import { definePluginPackage } from '@lora/core';
import { adalora } from './adalora-plugin.js';

/** What `@lora/adalora` provides: AdaLoRA (`peft_type: "ADALORA"`). */
export const pluginPackage = definePluginPackage({
  packageName: '@lora/adalora',
  plugins: [
    {
      name: 'adalora',
      kind: 'adapter',
      peftTypes: ['ADALORA'],
      summary: 'SVD-form adapters whose rank budget moves from init_r to target_r where importance is highest',
      create: adalora,
    },
  ],
});
