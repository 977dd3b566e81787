import * as tf from '@tensorflow/tfjs-core';
import { adapterStateDict, lora, LoraError, type AdapterModel, type PeftConfigJson } from '@lora/core';
import { loraFactorTensors, writeExportedLora, type ExportedLora } from '@lora/core/internal';
import { PEFT_CLASSIC_LORA_FIELDS } from './dora-config.js';
import type { DoubleLoraConfig } from './double-lora-config.js';
import { DoubleLoraAdapter } from './double-lora-layer.js';

/** Options for {@link exportDoubleLoraAsLora} and {@link saveDoubleLoraAsLora}. */
export interface DoubleLoraExportOptions {
  /** The double low-rank adapter to export (default `default`). */
  readonly adapterName?: string;
  /**
   * `lora_dropout` written to the exported config (default 0). A single LoRA has one dropout, so
   * the per-pair dropouts cannot be carried over; this only matters if the export is trained further.
   */
  readonly loraDropout?: number;
}

export type { ExportedLora };

const PREFIX = 'base_model.model.';

/**
 * Convert a double low-rank adapter into the plain PEFT LoRA of rank r₁ + r₂ that gives the same
 * outputs: `A = [s₁·A₁; s₂·A₂]`, `B = [B₁ | B₂]`, `r = lora_alpha = r₁ + r₂` (scaling 1), so
 * `B·A = s₁·B₁A₁ + s₂·B₂A₂`. Target selection, `bias`, `modules_to_save` (and their tensors) are
 * carried over. The result loads in Python PEFT and in `@lora/core`'s `lora()`.
 *
 * @returns the config object and the tensors; the caller disposes the tensors.
 * @throws {LoraError} when the adapter is not a `double-lora` adapter.
 * @example
 * const { config, tensors } = exportDoubleLoraAsLora(peft);
 * tf.dispose([...tensors.values()]);
 */
export function exportDoubleLoraAsLora(adapterModel: AdapterModel, options: DoubleLoraExportOptions = {}): ExportedLora {
  const adapterName = options.adapterName ?? 'default';
  const { plugin, config, targetModules } = adapterModel.adapterConfig(adapterName);
  if (plugin.name !== 'double-lora') {
    throw new LoraError(
      `[@lora/dora] exportDoubleLoraAsLora needs a double-lora adapter; "${adapterName}" is a ${plugin.name} adapter.`,
      { plugin: 'double-lora' },
    );
  }
  const double = config as DoubleLoraConfig;
  const rank = double.r1 + double.r2;
  const loraPlugin = lora();
  const loraConfig = loraPlugin.parseConfig({
    targetModules,
    excludeModules: double.excludeModules,
    layersToTransform: double.layersToTransform,
    layersPattern: double.layersPattern,
    modulesToSave: double.modulesToSave,
    bias: double.bias,
    taskType: double.taskType,
    baseModelNameOrPath: double.baseModelNameOrPath,
    revision: double.revision,
    fanInFanOut: double.fanInFanOut,
    initLoraWeights: double.initLoraWeights,
    r: rank,
    loraAlpha: rank,
    loraDropout: options.loraDropout ?? 0,
    extraPeftFields: { ...PEFT_CLASSIC_LORA_FIELDS },
  });
  const json = { ...loraPlugin.toPeftJson(loraConfig), target_modules: targetModules } as PeftConfigJson;

  const replaced = new Map<string, DoubleLoraAdapter>();
  for (const [modulePath, instance] of adapterModel.adapterInstances(adapterName)) {
    if (!(instance instanceof DoubleLoraAdapter)) {
      throw new LoraError(`[@lora/dora] The adapter "${adapterName}" at ${modulePath} is not a DoubleLoraAdapter.`, { plugin: 'double-lora' });
    }
    replaced.set(modulePath, instance);
  }
  const doubleKeys = new Set<string>();
  for (const [modulePath, instance] of replaced) for (const [key] of instance.namedTensors()) doubleKeys.add(`${PREFIX}${modulePath}.${key}`);

  const tensors = loraFactorTensors([...replaced].map(([modulePath, instance]) => ({ modulePath, ...instance.toLoraFactors() })));
  for (const [key, variable] of adapterStateDict(adapterModel, adapterName)) {
    if (!doubleKeys.has(key)) tensors.set(key, tf.clone(variable));
  }
  return { config: json, tensors };
}

/**
 * Write {@link exportDoubleLoraAsLora}'s result as a PEFT adapter directory
 * (`adapter_config.json` + `adapter_model.safetensors`, atomically). Load it with `lora()` here or
 * `PeftModel.from_pretrained` in Python.
 * @throws {LoraError} when the adapter is not a `double-lora` adapter, or a weight is NaN or Infinity (nothing is written then).
 * @example
 * await saveDoubleLoraAsLora(peft, './exported-lora');
 */
export async function saveDoubleLoraAsLora(adapterModel: AdapterModel, directory: string, options: DoubleLoraExportOptions = {}): Promise<void> {
  await writeExportedLora(exportDoubleLoraAsLora(adapterModel, options), directory, {
    packageName: '@lora/dora',
    plugin: 'double-lora',
    nonFiniteCause: 'the adapter was trained or loaded with non-finite weights',
  });
}
