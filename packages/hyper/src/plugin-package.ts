import { definePluginPackage } from '@lora/core';
import { HYPERLORA_PEFT_TYPE } from './hyper-config.js';
import { hyper } from './hyper-plugin.js';

/** What `@lora/hyper` provides: the HyperLoRA adapter `hyper` (`peft_type: "HYPERLORA"`). */
export const pluginPackage = definePluginPackage({
  packageName: '@lora/hyper',
  plugins: [
    {
      name: 'hyper',
      kind: 'adapter',
      peftTypes: [HYPERLORA_PEFT_TYPE],
      summary: "one hypernetwork generates every layer's LoRA from a condition (task, language pair, user vector); per-row conditions in one batch",
      create: hyper,
    },
  ],
});
