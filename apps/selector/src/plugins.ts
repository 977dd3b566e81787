import { createLoraRegistry, lora, type LoraPlugin, type LoraRegistry } from '@lora/core';
import { MissingPackageError } from './errors.js';
import type { VariantRecipe } from './recipe.js';
import { PLUGIN_FACTORIES } from './recipe.js';

/** Imports a package by name; injectable so tests can simulate a package that is not installed. */
export type PackageLoader = (packageName: string) => Promise<unknown>;

/**
 * The default loader: `import()`, except for packages listed in `LORA_SELECTOR_UNAVAILABLE`
 * (comma-separated), which are reported as not installed — a switch for testing installs that
 * lack a variant package.
 */
export const importPackage: PackageLoader = async (packageName) => {
  const hidden = (process.env['LORA_SELECTOR_UNAVAILABLE'] ?? '').split(',').map((s) => s.trim());
  if (hidden.includes(packageName)) {
    const error = new Error(`Cannot find package '${packageName}'`) as NodeJS.ErrnoException;
    error.code = 'ERR_MODULE_NOT_FOUND';
    throw error;
  }
  return import(packageName);
};

function isMissingModule(error: unknown, packageName: string): boolean {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  return (code === 'ERR_MODULE_NOT_FOUND' || code === 'MODULE_NOT_FOUND') && String((error as Error).message).includes(packageName);
}

/** Which of a recipe's packages can be imported. */
export async function checkInstalled(recipe: VariantRecipe, loader: PackageLoader = importPackage): Promise<{ installed: string[]; missing: string[] }> {
  const installed: string[] = [];
  const missing: string[] = [];
  for (const packageName of recipe.packages) {
    try {
      await loader(packageName);
      installed.push(packageName);
    } catch (error) {
      if (isMissingModule(error, packageName)) missing.push(packageName);
      else throw error;
    }
  }
  return { installed, missing };
}

/**
 * Load the plugins a recipe needs from their packages and build a registry with core's LoRA plus them.
 * @throws {MissingPackageError} naming the package to install.
 */
export async function registryForRecipe(recipe: VariantRecipe, loader: PackageLoader = importPackage, options: { seed?: number } = {}): Promise<LoraRegistry> {
  // issue 16: a seed makes adapter initialisation reproducible (a resumed run equals an uninterrupted one).
  const plugins: LoraPlugin[] = [lora(options)];
  for (const packageName of recipe.packages) {
    let loaded: unknown;
    try {
      loaded = await loader(packageName);
    } catch (error) {
      if (isMissingModule(error, packageName)) throw new MissingPackageError(packageName, `The ${recipe.variant} recipe`);
      throw error;
    }
    const { factory } = PLUGIN_FACTORIES[packageName]!;
    const create = (loaded as Record<string, unknown>)[factory];
    if (typeof create !== 'function') {
      throw new MissingPackageError(packageName, `The ${recipe.variant} recipe (the installed version has no ${factory}() factory)`);
    }
    plugins.push((create as (factoryOptions?: { seed?: number }) => LoraPlugin)(PLUGIN_FACTORIES[packageName]!.provides === recipe.adapter ? options : undefined));
  }
  const registry = createLoraRegistry({ plugins });
  registry.assertRecipe({ adapter: recipe.adapter, transforms: recipe.transforms });
  return registry;
}
