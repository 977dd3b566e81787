import { AdapterLayer, ModulesToSaveWrapper, type Module } from '@lora/core';
import type * as tf from '@tensorflow/tfjs-core';

/**
 * For every module of the tree, its path in a plain (adapter-free) checkpoint: an adapter layer's
 * `base_layer` and a modules_to_save wrapper's `original_module` take their parent's path; the
 * adapters' own copies map to null (not part of the base model).
 */
export function checkpointPaths(model: Module): Map<string, string | null> {
  const result = new Map<string, string | null>();
  const join = (prefix: string, name: string): string => (prefix ? `${prefix}.${name}` : name);
  const visit = (module: Module, treePath: string, keyPath: string | null): void => {
    result.set(treePath, keyPath);
    for (const [name, child] of module.namedChildren()) {
      let childKey: string | null;
      if (keyPath === null) childKey = null;
      else if (module instanceof AdapterLayer && name === 'base_layer') childKey = keyPath;
      else if (module instanceof ModulesToSaveWrapper) childKey = name === 'original_module' ? keyPath : null;
      else childKey = join(keyPath, name);
      visit(child, join(treePath, name), childKey);
    }
  };
  visit(model, '', '');
  return result;
}

/** Variables owned by adapters (adapter layers' tensors and modules_to_save copies). */
export function adapterVariables(model: Module): Set<tf.Variable> {
  const owned = new Set<tf.Variable>();
  for (const [, module] of model.namedModules()) {
    if (module instanceof AdapterLayer) {
      for (const name of module.adapterNames) for (const [, variable] of module.adapter(name)!.namedTensors()) owned.add(variable);
    } else if (module instanceof ModulesToSaveWrapper) {
      for (const name of module.adapterNames) for (const [, variable] of module.copy(name)!.namedParameters()) owned.add(variable);
    }
  }
  return owned;
}

/** Base-model parameters by checkpoint key (adapter variables left out). */
export function baseParametersByKey(model: Module): Map<string, tf.Variable> {
  const paths = checkpointPaths(model);
  const owned = adapterVariables(model);
  const result = new Map<string, tf.Variable>();
  for (const [path, variable] of model.namedParameters()) {
    if (owned.has(variable)) continue;
    const cut = path.lastIndexOf('.');
    const key = paths.get(cut < 0 ? '' : path.slice(0, cut));
    if (key === undefined || key === null) continue;
    const name = path.slice(cut + 1);
    result.set(key ? `${key}.${name}` : name, variable);
  }
  return result;
}
