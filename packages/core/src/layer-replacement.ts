import type { Module } from './module.js';

/**
 * Replace modules of a tree in place: `replacementFor(path, module)` returns the new module, or null
 * to keep it. A replaced module is disposed (unless returned itself). The root is never replaced.
 * Base transforms (4-bit quantization), dequantization and merges all go through here.
 *
 * All or nothing: every replacement is built before the first one goes in, so when
 * `replacementFor` throws (a layer that cannot be quantized, say), the tree is as it was and the
 * replacements already built are disposed. (Built one at a time and swapped in as they came, the
 * earlier layers stayed replaced, their old weights disposed, for good.)
 *
 * @returns the paths replaced, in tree order.
 */
export function replaceLayers(model: Module, replacementFor: (path: string, module: Module) => Module | null): string[] {
  const planned: [string, Module, Module][] = [];
  // A replaced module's subtree is not offered again (namedModules() is a snapshot of the tree).
  const gone = new Set<Module>();
  try {
    for (const [path, module] of model.namedModules()) {
      if (path === '' || gone.has(module)) continue;
      const replacement = replacementFor(path, module);
      if (replacement === null) continue;
      planned.push([path, module, replacement]);
      if (replacement !== module) for (const [, child] of module.namedModules()) gone.add(child);
    }
  } catch (error) {
    for (const [, module, replacement] of planned) if (replacement !== module) replacement.dispose();
    throw error;
  }
  for (const [path, module, replacement] of planned) {
    model.setSubmodule(path, replacement);
    if (replacement !== module) module.dispose();
  }
  return planned.map(([path]) => path);
}
