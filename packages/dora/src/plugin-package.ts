import { definePluginPackage } from '@lora/core';
import { dora } from './dora-plugin.js';
import { DOUBLE_LORA_PEFT_TYPE } from './double-lora-config.js';
import { doubleLora } from './double-lora-plugin.js';

/** What `@lora/dora` provides: DoRA (`peft_type: "LORA"` with `use_dora`) and the double low-rank mode (`DOUBLE_LORA`). */
export const pluginPackage = definePluginPackage({
  packageName: '@lora/dora',
  plugins: [
    { name: 'dora', kind: 'adapter', peftTypes: ['LORA'], summary: 'weight-decomposed LoRA: a trained magnitude per output times the normalised W + ΔW', create: dora },
    {
      name: 'double-lora',
      kind: 'adapter',
      peftTypes: [DOUBLE_LORA_PEFT_TYPE],
      summary: 'two independent low-rank pairs per target, ΔW = s₁·B₁A₁ + s₂·B₂A₂',
      create: doubleLora,
    },
  ],
});
