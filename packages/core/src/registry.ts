import { RegistryError } from './errors.js';
import type { AdapterPlugin, BaseTransform, LoraPlugin, PeftConfigJson, Recipe } from './plugin.js';
import { PLUGIN_SPECIFICATION_VERSION } from './plugin.js';

/** Which package provides each known plugin or saved adapter type, for "install X" messages. */
export const KNOWN_PLUGIN_PACKAGES: Readonly<Record<string, string>> = {
  lora: '@lora/core',
  dora: '@lora/dora',
  'double-lora': '@lora/dora',
  adalora: '@lora/adalora',
  hyper: '@lora/hyper',
  hyperlora: '@lora/hyper',
  quant: '@lora/quant',
};

const KNOWN_PEFT_TYPES: Readonly<Record<string, string>> = {
  LORA: '@lora/core',
  ADALORA: '@lora/adalora',
  DOUBLE_LORA: '@lora/dora',
  HYPERLORA: '@lora/hyper',
};

/** The result of checking a recipe. */
export interface RecipeCheck {
  readonly ok: boolean;
  /** One sentence per problem, saying why and what to do. */
  readonly problems: readonly string[];
  /** Packages to install for plugins the recipe names but the registry lacks. */
  readonly missingPackages: readonly string[];
}

/** Holds the plugins an application passed in; looks them up by name or by saved config. */
export interface LoraRegistry {
  readonly plugins: readonly LoraPlugin[];
  /** @throws {RegistryError} naming the package to install. */
  adapter(name: string): AdapterPlugin;
  /** @throws {RegistryError} naming the package to install. */
  transform(name: string): BaseTransform;
  has(name: string): boolean;
  /** The adapter plugin that reads a saved `adapter_config.json`. @throws {RegistryError} naming the package to install. */
  adapterForPeftConfig(json: PeftConfigJson): AdapterPlugin;
  /** Check that a recipe's plugins exist and compose. */
  checkRecipe(recipe: Recipe): RecipeCheck;
  /** @throws {RegistryError} with every problem of the recipe. */
  assertRecipe(recipe: Recipe): void;
}

function installHint(packageName: string | undefined): string {
  return packageName ? ` Install it with \`pnpm add ${packageName}\` and pass it to createLoraRegistry({ plugins }).` : '';
}

/**
 * Create a registry from explicitly passed plugins (no import side effects).
 *
 * @throws {RegistryError} on duplicate names or a plugin of an unsupported specification version.
 * @example
 * const registry = createLoraRegistry({ plugins: [lora()] });
 */
export function createLoraRegistry(options: { plugins: readonly LoraPlugin[] }): LoraRegistry {
  const byName = new Map<string, LoraPlugin>();
  for (const plugin of options.plugins) {
    if (plugin.specificationVersion !== PLUGIN_SPECIFICATION_VERSION) {
      throw new RegistryError(
        `[@lora/core] Plugin "${plugin.name}" implements plugin specification ${String(plugin.specificationVersion)}, but this @lora/core supports ${PLUGIN_SPECIFICATION_VERSION}. Install matching versions of @lora/core and ${plugin.packageName}.`,
        { plugin: plugin.name, packageName: plugin.packageName },
      );
    }
    if (byName.has(plugin.name)) {
      throw new RegistryError(`[@lora/core] Two plugins are named "${plugin.name}". Pass each plugin once.`, { plugin: plugin.name });
    }
    byName.set(plugin.name, plugin);
  }

  const adapter = (name: string): AdapterPlugin => {
    const plugin = byName.get(name);
    if (plugin?.kind === 'adapter') return plugin;
    if (plugin) throw new RegistryError(`[@lora/core] "${name}" is a base transform, not an adapter plugin.`, { plugin: name });
    const packageName = KNOWN_PLUGIN_PACKAGES[name];
    throw new RegistryError(
      `[@lora/core] No adapter plugin named "${name}" is registered (registered: ${[...byName.keys()].join(', ') || 'none'}).${installHint(packageName)}`,
      { plugin: name, packageName },
    );
  };
  const transform = (name: string): BaseTransform => {
    const plugin = byName.get(name);
    if (plugin?.kind === 'base-transform') return plugin;
    if (plugin) throw new RegistryError(`[@lora/core] "${name}" is an adapter plugin, not a base transform.`, { plugin: name });
    const packageName = KNOWN_PLUGIN_PACKAGES[name];
    throw new RegistryError(
      `[@lora/core] No base transform named "${name}" is registered.${installHint(packageName)}`,
      { plugin: name, packageName },
    );
  };

  const checkRecipe = (recipe: Recipe): RecipeCheck => {
    const problems: string[] = [];
    const missingPackages: string[] = [];
    const note = (error: unknown): void => {
      problems.push((error as Error).message);
      const packageName = error instanceof RegistryError ? error.packageName : undefined;
      if (packageName && !missingPackages.includes(packageName)) missingPackages.push(packageName);
    };
    let adapterPlugin: AdapterPlugin | undefined;
    try {
      adapterPlugin = adapter(recipe.adapter);
    } catch (error) {
      note(error);
    }
    const seen = new Set<string>();
    for (const name of recipe.transforms ?? []) {
      if (seen.has(name)) problems.push(`[@lora/core] Base transform "${name}" is listed twice.`);
      seen.add(name);
      try {
        transform(name);
      } catch (error) {
        note(error);
        continue;
      }
      if (adapterPlugin && !adapterPlugin.compatibility.transforms.includes(name)) {
        const reason = adapterPlugin.compatibility.refusals?.[name];
        problems.push(
          `[@lora/core] Adapter "${adapterPlugin.name}" does not compose with base transform "${name}"${reason ? `: ${reason}` : '.'}` +
            ` It composes with: ${adapterPlugin.compatibility.transforms.join(', ') || 'no base transforms'}.`,
        );
      }
    }
    return { ok: problems.length === 0, problems, missingPackages };
  };

  return {
    plugins: [...byName.values()],
    adapter,
    transform,
    has: (name) => byName.has(name),
    adapterForPeftConfig(json) {
      for (const plugin of byName.values()) {
        if (plugin.kind === 'adapter' && plugin.claimsPeftConfig(json)) return plugin;
      }
      const packageName = json.peft_type === 'LORA' && json['use_dora'] === true ? '@lora/dora' : KNOWN_PEFT_TYPES[json.peft_type];
      const what = json.peft_type === 'LORA' && json['use_dora'] === true ? 'a DoRA adapter (LORA with use_dora)' : `peft_type "${json.peft_type}"`;
      throw new RegistryError(`[@lora/core] No registered plugin reads ${what}.${installHint(packageName)}`, { packageName });
    },
    checkRecipe,
    assertRecipe(recipe) {
      const check = checkRecipe(recipe);
      if (!check.ok) throw new RegistryError(check.problems.join('\n'), { packageName: check.missingPackages[0] });
    },
  };
}
