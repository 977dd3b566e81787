import { isBaseLayer, PLUGIN_SPECIFICATION_VERSION, type BaseLayer, type BaseTransform, type Module } from '@lora/core';
import { parseQuantOptions, type QuantConfig, type QuantOptions } from './quant-config.js';
import { QuantLinear } from './quant-layer.js';

/** The base transform `quant()` returns: core's `BaseTransform` plus its resolved config. */
export interface QuantTransform extends BaseTransform {
  /** Registry name, as named in `transforms: ['quant']`. */
  readonly name: 'quant';
  /** The npm package providing it, named in errors when it is missing. */
  readonly packageName: '@lora/quant';
  /** The options with defaults filled. */
  readonly config: QuantConfig;
  /** A `QuantLinear` holding `module`'s weight in 4 bits (its bias in float32); the caller disposes the old layer. */
  transform(module: Module & BaseLayer, path: string): QuantLinear;
}

/**
 * Whether the layer at `path` is quantized under `config`: every base layer (a core `Linear`, also
 * GPT-2's Conv1D) except layers already 4-bit and skipped modules. With `skipModules` null, the model's
 * output heads (its `outputHeadPaths`, else `lm_head`) are skipped, as transformers keeps `lm_head`.
 */
export function shouldQuantize(path: string, module: Module, model: Module | undefined, config: QuantConfig): boolean {
  if (!isBaseLayer(module) || module instanceof QuantLinear) return false;
  if (config.skipModules !== null) return !config.skipModules.some((entry) => path.includes(entry));
  const heads = (model as (Module & { readonly outputHeadPaths?: readonly string[] }) | undefined)?.outputHeadPaths ?? ['lm_head'];
  const last = path.slice(path.lastIndexOf('.') + 1);
  return !heads.some((head) => head === path || head === last);
}

/**
 * The 4-bit base transform (QLoRA's quantized base): replaces each frozen linear layer by a
 * {@link QuantLinear} holding NF4/FP4 packed codes. Pass it to the registry next to `lora()` and name it in
 * `transforms` to get QLoRA. Options default to QLoRA's: NF4, blocks of 64, double quantization.
 *
 * @throws {ConfigError} on invalid options (at creation, not at use).
 * @example
 * const registry = createLoraRegistry({ plugins: [lora(), quant({ type: 'nf4', doubleQuant: true })] });
 * const peft = AdapterModel.create(model, { registry, config: { r: 8, targetModules: ['c_attn'] }, transforms: ['quant'] });
 */
export function quant(options: QuantOptions = {}): QuantTransform {
  const config = parseQuantOptions(options);
  return {
    specificationVersion: PLUGIN_SPECIFICATION_VERSION,
    kind: 'base-transform',
    name: 'quant',
    packageName: '@lora/quant',
    config,
    shouldTransform(path, module, context) {
      return shouldQuantize(path, module, context.model, config);
    },
    transform(module, path) {
      return QuantLinear.fromLayer(module, {
        type: config.type,
        blockSize: config.blockSize,
        doubleQuant: config.doubleQuant,
        computeDtype: config.computeDtype,
        merge: config.merge,
        keepOriginalOnMerge: config.keepOriginalOnMerge,
        name: path,
      });
    },
  };
}
