import { saveAdapter, type AdapterModel } from '@lora/core';

/**
 * Save adapters exactly as PEFT saves AdaLoRA (`AdaLoraModel._get_adapter_state_dict`): each
 * module's `lora_A`, `lora_E` (rows) and `lora_B` (columns) pruned to the triplets the last rank
 * allocation kept — a module pruned to rank 0 is stored as zero-size tensors — and the boolean
 * `rank_pattern` of every module in `adapter_config.json`. The adapters in memory are not changed
 * (training can go on).
 *
 * Core's `saveAdapter` writes the same files (through the adapter's `tensorsForSave` hook); this
 * name is kept for discoverability.
 *
 * @example
 * await saveAdaLoraAdapter(peft, './my-adalora'); // loads in Python PEFT with PeftModel.from_pretrained
 */
export function saveAdaLoraAdapter(adapterModel: AdapterModel, directory: string, options: { adapterNames?: readonly string[] } = {}): Promise<void> {
  return saveAdapter(adapterModel, directory, options);
}
