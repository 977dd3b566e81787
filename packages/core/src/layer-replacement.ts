import type { Module } from './module.js';

/**
 * Replace modules of a tree in place: `replacementFor(path, module)` returns the new module, or null
 * to keep it. A replaced module is disposed (unless returned itself). The root is never replaced.
 * Base transforms (4-bit quantization), dequantization and merges all go through here.
 *
 * @returns the paths replaced, in tree order.
 */
export function replaceLayers(model: Module, replacementFor: (path: string, module: Module) => Module | null): string[] {
  const replaced: string[] = [];
  // namedModules() is a snapshot, so replacing while walking is safe; a replaced subtree's old children are skipped.
  const gone = new Set<Module>();
  for (const [path, module] of model.namedModules()) {
    if (path === '' || gone.has(module)) continue;
    const replacement = replacementFor(path, module);
    if (replacement === null) continue;
    model.setSubmodule(path, replacement);
    if (replacement !== module) {
      for (const [, child] of module.namedModules()) gone.add(child);
      module.dispose();
    }
    replaced.push(path);
  }
  return replaced;
}
