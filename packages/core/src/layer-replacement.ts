import type { Module } from './module.js';

/** Replacements made by {@link swapLayers}, not yet final: the replaced modules are kept until `commit`. */
export interface LayerSwap {
  /** The paths replaced, in tree order. */
  readonly paths: readonly string[];
  /** Keep the replacements: dispose the modules they replaced. */
  commit(): void;
  /** Put the replaced modules back and dispose the replacements. */
  undo(): void;
}

/**
 * Replace modules of a tree in place, keeping the replaced ones until `commit()` (or putting them
 * back with `undo()`): `replacementFor(path, module)` returns the new module, or null to keep it.
 * The root is never replaced, nor anything inside a replaced module.
 *
 * All or nothing: every replacement is built before the first one goes in, so when
 * `replacementFor` throws (a layer that cannot be quantized, say), the tree is as it was and the
 * replacements already built are disposed. (Built one at a time and swapped in as they came, the
 * earlier layers stayed replaced, their old weights disposed, for good.)
 */
export function swapLayers(model: Module, replacementFor: (path: string, module: Module) => Module | null): LayerSwap {
  const planned: [string, Module, Module][] = [];
  // A replaced module's subtree is not offered again (namedModules() is a snapshot of the tree).
  const gone = new Set<Module>();
  const disposeReplacements = (): void => {
    for (const [, module, replacement] of planned) if (replacement !== module) replacement.dispose();
  };
  try {
    for (const [path, module] of model.namedModules()) {
      if (path === '' || gone.has(module)) continue;
      const replacement = replacementFor(path, module);
      if (replacement === null) continue;
      planned.push([path, module, replacement]);
      if (replacement !== module) for (const [, child] of module.namedModules()) gone.add(child);
    }
  } catch (error) {
    disposeReplacements();
    throw error;
  }
  for (const [path, , replacement] of planned) model.setSubmodule(path, replacement);
  return {
    paths: planned.map(([path]) => path),
    commit() {
      for (const [, module, replacement] of planned) if (replacement !== module) module.dispose();
    },
    undo() {
      for (const [path, module] of planned) model.setSubmodule(path, module);
      disposeReplacements();
    },
  };
}

/**
 * {@link swapLayers}, committed at once: a replaced module is disposed (unless returned itself).
 * Base transforms (4-bit quantization) and dequantization go through here.
 *
 * @returns the paths replaced, in tree order.
 */
export function replaceLayers(model: Module, replacementFor: (path: string, module: Module) => Module | null): string[] {
  const swap = swapLayers(model, replacementFor);
  swap.commit();
  return [...swap.paths];
}
