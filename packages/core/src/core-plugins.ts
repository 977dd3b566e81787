import { lora } from './lora-plugin.js';
import { definePluginPackage } from './plugin-package.js';

/** What `@lora/core` provides: the LoRA adapter plugin (`peft_type: "LORA"` without `use_dora`). */
export const pluginPackage = definePluginPackage({
  packageName: '@lora/core',
  plugins: [
    {
      name: 'lora',
      kind: 'adapter',
      peftTypes: ['LORA'],
      summary: 'fixed low-rank update ΔW = (α/r)·B·A beside the frozen weights',
      create: lora,
    },
  ],
});
