import { LoraError, saveAdapter, type AdapterModel } from '@lora/core';
import { ADALORA_PLUGIN_NAME } from './adalora-config.js';

/**
 * Save adapters exactly as PEFT saves AdaLoRA (`AdaLoraModel._get_adapter_state_dict`): each
 * module's `lora_A`, `lora_E` (rows) and `lora_B` (columns) pruned to the triplets the last rank
 * allocation kept — a module pruned to rank 0 is stored as zero-size tensors — and the boolean
 * `rank_pattern` of every module in `adapter_config.json`. The adapters in memory are not changed
 * (training can go on).
 *
 * Core's `saveAdapter` writes the same files (through the adapter's `tensorsForSave` hook); this
 * name is kept for discoverability, and refuses adapters of other methods (save those with `saveAdapter`).
 *
 * @throws {LoraError} when an adapter to save (default: every adapter) is not AdaLoRA; nothing is written then.
 * @example
 * await saveAdaLoraAdapter(peft, './my-adalora'); // loads in Python PEFT with PeftModel.from_pretrained
 */
export function saveAdaLoraAdapter(adapterModel: AdapterModel, directory: string, options: { adapterNames?: readonly string[] } = {}): Promise<void> {
  // Checked first: a mixed model would otherwise be written in part under an AdaLoRA name.
  for (const name of options.adapterNames ?? adapterModel.adapterNames) {
    const { plugin } = adapterModel.adapterConfig(name);
    if (plugin.peftType !== 'ADALORA') {
      return Promise.reject(
        new LoraError(`[adalora] saveAdaLoraAdapter: adapter "${name}" is ${plugin.name} (${plugin.peftType}), not AdaLoRA; nothing was written to ${directory}. Save it with saveAdapter from @lora/core.`, {
          plugin: ADALORA_PLUGIN_NAME,
        }),
      );
    }
  }
  return saveAdapter(adapterModel, directory, options);
}
