// Variants that can be expressed as a plain LoRA (a double low-rank adapter, a HyperLoRA for one
// condition) export one: the factors under PEFT's keys, the config, and the two files written the way
// saveAdapter writes them. One implementation, so every export refuses the same bad values.
import * as tf from '@tensorflow/tfjs-core';
import { ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME } from './adapter-files.js';
import { LoraError } from './errors.js';
import { fileHost } from './file-host.js';
import { writeJsonAtomic, writeSafetensorsFile } from './files.js';
import { countNonFinite } from './finite.js';
import type { PeftConfigJson } from './plugin.js';
import { tensorToEntry, type SafetensorsEntry } from './safetensors.js';

/** A plain PEFT LoRA adapter in memory: its `adapter_config.json` object and its tensors by saved key. */
export interface ExportedLora {
  /** The `adapter_config.json` object (`peft_type: "LORA"`). */
  readonly config: PeftConfigJson;
  /** Saved key → tensor (`base_model.model.<path>.lora_A.weight`, …). The caller disposes them. */
  readonly tensors: Map<string, tf.Tensor>;
}

/** One module's plain LoRA factors: ΔW = s·B·A with PEFT's shapes (A: r × in, B: out × r). */
export interface LoraFactors {
  /** The module's path in the model, e.g. `h.0.attn.c_attn`. */
  readonly modulePath: string;
  readonly loraA: tf.Tensor;
  readonly loraB: tf.Tensor;
}

const PREFIX = 'base_model.model.';

/**
 * The tensors of a plain PEFT LoRA by saved key (`base_model.model.<path>.lora_A.weight` and
 * `.lora_B.weight`). The tensors are taken, not copied: the map now owns them.
 */
export function loraFactorTensors(factors: Iterable<LoraFactors>): Map<string, tf.Tensor> {
  const tensors = new Map<string, tf.Tensor>();
  for (const { modulePath, loraA, loraB } of factors) {
    tensors.set(`${PREFIX}${modulePath}.lora_A.weight`, loraA);
    tensors.set(`${PREFIX}${modulePath}.lora_B.weight`, loraB);
  }
  return tensors;
}

/** Options for {@link writeExportedLora}. */
export interface ExportedLoraWriteOptions {
  /** The package exporting, named in errors, e.g. `@lora/hyper`. */
  readonly packageName: string;
  /** The plugin set on the error (`LoraError.plugin`), e.g. `hyper`. */
  readonly plugin: string;
  /** Why a weight may not be finite, said in the error (default: a diverged training run). */
  readonly nonFiniteCause?: string;
}

/**
 * Write an {@link ExportedLora} as a PEFT adapter directory (`adapter_config.json` +
 * `adapter_model.safetensors`, each written atomically, metadata `{"format": "pt"}`), then dispose
 * its tensors (also when it throws).
 * @throws {LoraError} when a tensor holds NaN or Infinity; nothing is written then.
 */
export async function writeExportedLora(exported: ExportedLora, directory: string, options: ExportedLoraWriteOptions): Promise<void> {
  try {
    const entries = new Map<string, SafetensorsEntry>();
    for (const [key, tensor] of exported.tensors) {
      const entry = tensorToEntry(tensor);
      if (countNonFinite(entry).count > 0) {
        throw new LoraError(
          `[${options.packageName}] Not exporting to ${directory}: ${key} holds NaN or Infinity (${options.nonFiniteCause ?? 'the training run diverged'}). Retrain with a lower learning rate.`,
          { plugin: options.plugin },
        );
      }
      entries.set(key, entry);
    }
    await writeSafetensorsFile(fileHost().join(directory, ADAPTER_WEIGHTS_NAME), entries, { format: 'pt' });
    await writeJsonAtomic(fileHost().join(directory, ADAPTER_CONFIG_NAME), exported.config);
  } finally {
    tf.dispose([...exported.tensors.values()]);
  }
}
