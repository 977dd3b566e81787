import { type AdapterModel, type Module, isBaseLayer } from '@lora/core';
import { replaceLayers } from '@lora/core/internal';
import type { QuantOptions } from './quant-config.js';
import { QuantLinear } from './quant-layer.js';
import { quant } from './quant-plugin.js';

/**
 * Quantize a model in place: every linear layer selected as by {@link quant} (all base layers but the
 * output heads or `skipModules`) is replaced by a {@link QuantLinear}, and the float layer is disposed.
 * Use it for a plain model (no adapters yet); with an `AdapterModel`, pass `transforms: ['quant']` instead.
 *
 * @returns the paths of the replaced layers.
 * @throws {ConfigError} on invalid options; {LoraError} when a weight is not finite.
 * @example
 * const replaced = quantizeModel(model, { type: 'nf4', doubleQuant: true });
 */
export function quantizeModel(model: Module, options: QuantOptions = {}): string[] {
  // The same selection and layer as the `quant` base transform applies inside an AdapterModel.
  const transform = quant(options);
  return replaceLayers(model, (path, module) => (isBaseLayer(module) && transform.shouldTransform(path, module, { model }) ? transform.transform(module, path) : null));
}

/**
 * Replace every {@link QuantLinear} of the tree (also inside adapter layers) with a float32 core
 * `Linear` holding its dequantized weight, in the source layer's layout. The quantized layers are disposed.
 * @returns the paths of the replaced layers.
 */
export function dequantizeModel(model: Module): string[] {
  return replaceLayers(model, (_path, module) => (module instanceof QuantLinear ? module.toLinear() : null));
}

/**
 * Merge the active adapters into a float model (the "dequantize" merge): core's
 * `adapterModel.mergeAndUnload({ dequantize: true })`, which replaces each 4-bit base by its float32
 * `Linear` ({@link QuantLinear.toLinear}, the source layout) before merging, so the merged weight is
 * exactly `dequant(W4) + ΔW`, the function the adapter was trained against. Adapters already merged
 * are unmerged first (restoring their 4-bit bytes).
 *
 * @returns the plain float model (the same object as `adapterModel.model`).
 */
export function mergeAndDequantize<M extends Module>(adapterModel: AdapterModel<M>, options: { readonly safe?: boolean } = {}): M {
  return adapterModel.mergeAndUnload({ safe: options.safe, dequantize: true });
}
