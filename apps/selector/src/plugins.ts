import {
  createDescribedPlugin,
  createLoraRegistry,
  findPluginForPeftConfig,
  pluginPackage as corePluginPackage,
  type LoraPlugin,
  type LoraRegistry,
  type PeftConfigJson,
  type PluginPackageDescriptor,
} from '@lora/core';
import { CliError, MissingPackageError } from './errors.js';
import { recipePackages, type VariantRecipe } from './recipe.js';

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

function isDescriptor(value: unknown, packageName: string): value is PluginPackageDescriptor {
  const candidate = value as Partial<PluginPackageDescriptor> | undefined;
  return candidate?.packageName === packageName && Array.isArray(candidate.plugins);
}

/**
 * The plugin descriptor (`pluginPackage` export) of an installed package, or null when the package
 * is not installed.
 * @throws {CliError} when the package is installed but exports no descriptor of its own name.
 */
export async function loadPluginPackage(packageName: string, loader: PackageLoader = importPackage): Promise<PluginPackageDescriptor | null> {
  if (packageName === corePluginPackage.packageName) return corePluginPackage;
  let loaded: unknown;
  try {
    loaded = await loader(packageName);
  } catch (error) {
    if (isMissingModule(error, packageName)) return null;
    throw error;
  }
  const descriptor = (loaded as Record<string, unknown> | undefined)?.['pluginPackage'];
  if (!isDescriptor(descriptor, packageName)) {
    throw new CliError(`${packageName} is installed but exports no plugin descriptor (pluginPackage) for itself; install a version made for this CLI.`, { exitCode: 2 });
  }
  return descriptor;
}

/**
 * Plugin packages named with `--plugin` or in `LORA_PLUGINS` (comma-separated): third-party
 * packages exporting a `pluginPackage` descriptor, loaded like ours.
 */
export function extraPluginPackages(fromFlags: readonly string[] = []): string[] {
  const fromEnvironment = (process.env['LORA_PLUGINS'] ?? '').split(',').map((name) => name.trim()).filter(Boolean);
  return [...new Set([...fromFlags, ...fromEnvironment])];
}

/** Which of a recipe's packages can be imported. */
export async function checkInstalled(recipe: VariantRecipe, loader: PackageLoader = importPackage): Promise<{
  /** The recipe's packages that import and export their plugin descriptor, in recipe order. */
  installed: string[];
  /** The recipe's packages that are not installed, in recipe order (empty when all are). */
  missing: string[];
}> {
  const installed: string[] = [];
  const missing: string[] = [];
  for (const packageName of recipe.packages) {
    if ((await loadPluginPackage(packageName, loader)) === null) missing.push(packageName);
    else installed.push(packageName);
  }
  return { installed, missing };
}

/** Create the named plugins from descriptors, in order. @throws {CliError} when no descriptor provides one. */
function pluginsByName(descriptors: readonly PluginPackageDescriptor[], names: readonly string[], purpose: string, seed?: number): LoraPlugin[] {
  return names.map((name) => {
    for (const descriptor of descriptors) {
      const entry = descriptor.plugins.find((candidate) => candidate.name === name);
      if (entry) return createDescribedPlugin(descriptor, entry, entry.kind === 'adapter' && seed !== undefined ? { seed } : undefined);
    }
    throw new CliError(`${purpose} needs plugin "${name}", which none of ${descriptors.map((d) => d.packageName).join(', ')} provides; install versions made for this CLI.`);
  });
}

/**
 * Load the plugins a recipe needs from their packages' descriptors and build a registry with them.
 * @throws {MissingPackageError} naming the package to install.
 */
export async function registryForRecipe(recipe: VariantRecipe, loader: PackageLoader = importPackage, options: { seed?: number } = {}): Promise<LoraRegistry> {
  const descriptors: PluginPackageDescriptor[] = [corePluginPackage];
  for (const packageName of recipe.packages) {
    const descriptor = await loadPluginPackage(packageName, loader);
    if (!descriptor) throw new MissingPackageError(packageName, `The ${recipe.variant} recipe`);
    descriptors.push(descriptor);
  }
  const names = [...new Set(['lora', recipe.adapter, ...recipe.transforms])];
  // A seed makes adapter initialisation reproducible (a resumed run equals an uninterrupted one); adapter factories take it.
  const registry = createLoraRegistry({ plugins: pluginsByName(descriptors, names, `The ${recipe.variant} recipe`, options.seed) });
  registry.assertRecipe({ adapter: recipe.adapter, transforms: recipe.transforms });
  return registry;
}

/**
 * The plugins that read saved adapter configs, found through the descriptors of the installed
 * plugin packages (core, the variant packages the flowchart's recipes name, and `extraPackages`).
 * Packages are imported only as far as needed.
 * @throws {CliError} (exit 2) naming the file and the packages checked when no installed package reads one.
 */
export async function pluginsForAdapterConfigs(
  configs: readonly { readonly file: string; readonly json: PeftConfigJson }[],
  options: { loader?: PackageLoader; extraPackages?: readonly string[] } = {},
): Promise<LoraPlugin[]> {
  const loader = options.loader ?? importPackage;
  const candidates = [...new Set([corePluginPackage.packageName, ...(options.extraPackages ?? []), ...recipePackages()])];
  const loaded: PluginPackageDescriptor[] = [];
  const notInstalled: string[] = [];
  let next = 0;
  const plugins = new Map<string, LoraPlugin>();
  for (const { file, json } of configs) {
    let found = findPluginForPeftConfig(loaded, json);
    while (!found && next < candidates.length) {
      const packageName = candidates[next++]!;
      const descriptor = await loadPluginPackage(packageName, loader);
      if (!descriptor) {
        notInstalled.push(packageName);
        continue;
      }
      loaded.push(descriptor);
      found = findPluginForPeftConfig([descriptor], json);
    }
    if (!found) {
      const peftType = Object.hasOwn(json, 'peft_type') ? JSON.stringify(json.peft_type) : 'missing';
      throw new CliError(
        `${file}: peft_type ${peftType}${json['use_dora'] === true ? ' with use_dora' : ''} is read by none of the installed plugin packages (${loaded.map((d) => d.packageName).join(', ')}).` +
          (notInstalled.length > 0 ? ` Not installed: ${notInstalled.join(', ')}; install the one that saved it,` : ' Install the package that saved it') +
          ' or name a third-party plugin package with --plugin <package>.',
        { exitCode: 2 },
      );
    }
    if (!plugins.has(found.plugin.name)) plugins.set(found.plugin.name, found.plugin);
  }
  return [...plugins.values()];
}

/** Load every installed plugin package among core, the recipes' packages and `extraPackages`. */
export async function installedPluginPackages(options: { loader?: PackageLoader; extraPackages?: readonly string[] } = {}): Promise<PluginPackageDescriptor[]> {
  const descriptors: PluginPackageDescriptor[] = [];
  for (const packageName of new Set([corePluginPackage.packageName, ...(options.extraPackages ?? []), ...recipePackages()])) {
    const descriptor = await loadPluginPackage(packageName, options.loader ?? importPackage);
    if (descriptor) descriptors.push(descriptor);
  }
  return descriptors;
}
