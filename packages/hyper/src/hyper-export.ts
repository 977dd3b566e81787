import * as tf from '@tensorflow/tfjs-core';
import { adapterStateDict, lora, LoraError, type AdapterModel, type PeftConfigJson } from '@lora/core';
import { loraFactorTensors, writeExportedLora as writePeftLora, type ExportedLora } from '@lora/core/internal';
import type { Condition } from './conditions.js';
import type { HyperLoraConfig } from './hyper-config.js';
import { HyperLoraState } from './hyper-state.js';

export type { ExportedLora };

/** Options for {@link hyperStateToLora}. */
export interface HyperStateExportOptions {
  /** The condition to freeze (default: every factor null). @throws {ConfigError} for an unknown factor or value. */
  readonly condition?: Condition;
  /** Extra tensors to carry over unchanged under their saved keys (modules_to_save copies, trained biases); cloned. */
  readonly extraTensors?: ReadonlyMap<string, tf.Tensor>;
  /** Extra config fields (e.g. `modules_to_save`, `bias`, `task_type`, `base_model_name_or_path`). */
  readonly extraConfig?: Readonly<Record<string, unknown>>;
}

/**
 * The plain PEFT LoRA that a HyperLoRA state gives for one fixed condition: the same r,
 * `lora_alpha` and `use_rslora` (so PEFT's scale s reproduces ΔW = s·B(c)·A(c) exactly), any
 * extra gain of the head folded into B (`diag`: B·diag(s(c))), `target_modules` = the exact
 * module paths. Loads in `@lora/core`'s `lora()` and in Python PEFT.
 * @returns the config object and the tensors; the caller disposes the tensors.
 * @throws {ConfigError} for an unknown factor or value in the condition.
 */
export function hyperStateToLora(state: HyperLoraState, options: HyperStateExportOptions = {}): ExportedLora {
  const tensors = loraFactorTensors(state.exportFactors(options.condition));
  for (const [key, tensor] of options.extraTensors ?? []) tensors.set(key, tf.clone(tensor));
  const plugin = lora();
  const targetModules = state.plan.targets.map((target) => target.modulePath);
  const config = plugin.parseConfig({ r: state.config.r, loraAlpha: state.config.loraAlpha, useRslora: state.config.useRslora, targetModules, loraDropout: 0 });
  const json = { ...plugin.toPeftJson(config), ...options.extraConfig, target_modules: targetModules } as PeftConfigJson;
  return { config: json, tensors };
}

/**
 * Write an {@link ExportedLora} as a PEFT adapter directory (`adapter_config.json` +
 * `adapter_model.safetensors`, each written atomically), then dispose its tensors.
 * @throws {LoraError} when a tensor holds NaN or Infinity; nothing is written then.
 */
export async function writeExportedLora(exported: ExportedLora, directory: string): Promise<void> {
  await writePeftLora(exported, directory, { packageName: '@lora/hyper', plugin: 'hyper', nonFiniteCause: 'the generator diverged' });
}

/** Options for {@link exportHyperLoraAsLora} and {@link saveHyperLoraAsLora}. */
export interface HyperLoraExportOptions {
  /** The HyperLoRA adapter to export (default `default`). */
  readonly adapterName?: string;
  /** The condition to freeze (default: every factor null). */
  readonly condition?: Condition;
}

/**
 * The plain PEFT LoRA an adapter model's HyperLoRA gives for one fixed condition (see
 * {@link hyperStateToLora}); `modules_to_save` copies, trained biases, `bias`, `task_type` and the
 * base model's name are carried over.
 * @returns the config object and the tensors; the caller disposes the tensors.
 * @throws {LoraError} when the adapter is not a HyperLoRA; {ConfigError} for an unknown condition.
 * @example
 * const { config, tensors } = exportHyperLoraAsLora(peft, { condition: { src: 'fr', tgt: 'de' } });
 */
export function exportHyperLoraAsLora(adapterModel: AdapterModel, options: HyperLoraExportOptions = {}): ExportedLora {
  const adapterName = options.adapterName ?? 'default';
  const { plugin, config } = adapterModel.adapterConfig(adapterName);
  const state = adapterModel.adapterState(adapterName);
  if (!(state instanceof HyperLoraState)) {
    throw new LoraError(`[@lora/hyper] exportHyperLoraAsLora needs a HyperLoRA adapter; "${adapterName}" is a ${plugin.name} adapter.`, { plugin: 'hyper' });
  }
  const own = new Set(state.namedTensors().map(([key]) => key));
  const extraTensors = new Map([...adapterStateDict(adapterModel, adapterName)].filter(([key]) => !own.has(key)));
  const hyperConfig = config as HyperLoraConfig;
  return hyperStateToLora(state, {
    condition: options.condition,
    extraTensors,
    extraConfig: {
      bias: hyperConfig.bias,
      modules_to_save: hyperConfig.modulesToSave,
      task_type: hyperConfig.taskType,
      base_model_name_or_path: hyperConfig.baseModelNameOrPath,
      revision: hyperConfig.revision,
    },
  });
}

/**
 * Write {@link exportHyperLoraAsLora}'s result as a PEFT LoRA directory (`adapter_config.json` +
 * `adapter_model.safetensors`, atomically). Load it with `lora()` here or `PeftModel.from_pretrained` in Python.
 * @throws {LoraError} when the adapter is not a HyperLoRA or a weight is not finite (nothing is written then).
 * @example
 * await saveHyperLoraAsLora(peft, './fr-de', { condition: { src: 'fr', tgt: 'de' } });
 */
export async function saveHyperLoraAsLora(adapterModel: AdapterModel, directory: string, options: HyperLoraExportOptions = {}): Promise<void> {
  await writeExportedLora(exportHyperLoraAsLora(adapterModel, options), directory);
}
