import { RegistryError } from './errors.js';
import type { AdapterPlugin, BaseTransform, LoraPlugin, PeftConfigJson, Recipe } from './plugin.js';
import { PLUGIN_SPECIFICATION_VERSION } from './plugin.js';

/** The result of checking a recipe. */
export interface RecipeCheck {
  /** True when the recipe has no problems (`problems` is empty). */
  readonly ok: boolean;
  /** One sentence per problem, saying why and what to do. */
  readonly problems: readonly string[];
  /** Names of plugins the recipe names but the registry lacks. */
  readonly missingPlugins: readonly string[];
}

/** Holds the plugins an application passed in; looks them up by name or by saved config. */
export interface LoraRegistry {
  /** Every registered plugin (adapters and base transforms), in the order they were passed. */
  readonly plugins: readonly LoraPlugin[];
  /** @throws {RegistryError} naming the package to install. */
  adapter(name: string): AdapterPlugin;
  /** @throws {RegistryError} naming the package to install. */
  transform(name: string): BaseTransform;
  /** Whether a plugin (adapter or base transform) is registered under `name`. */
  has(name: string): boolean;
  /** The adapter plugin that reads a saved `adapter_config.json`. @throws {RegistryError} naming the package to install. */
  adapterForPeftConfig(json: PeftConfigJson): AdapterPlugin;
  /** Check that a recipe's plugins exist and compose. */
  checkRecipe(recipe: Recipe): RecipeCheck;
  /** @throws {RegistryError} with every problem of the recipe. */
  assertRecipe(recipe: Recipe): void;
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

  // Own entries only: a name such as "toString" or "__proto__" must never reach Object.prototype.
  const lookup = (name: string): LoraPlugin | undefined => (typeof name === 'string' ? byName.get(name) : undefined);
  const registered = (kind: LoraPlugin['kind']): string =>
    [...byName.values()].filter((plugin) => plugin.kind === kind).map((plugin) => `${plugin.name} (${plugin.packageName})`).join(', ') || 'none';
  const adapter = (name: string): AdapterPlugin => {
    const plugin = lookup(name);
    if (plugin?.kind === 'adapter') return plugin;
    if (plugin) throw new RegistryError(`[@lora/core] "${name}" is a base transform, not an adapter plugin.`, { plugin: name });
    throw new RegistryError(
      `[@lora/core] No adapter plugin named ${JSON.stringify(name)} is registered (registered: ${registered('adapter')}). Pass the plugin from the package that provides it to createLoraRegistry({ plugins }).`,
      { plugin: String(name) },
    );
  };
  const transform = (name: string): BaseTransform => {
    const plugin = lookup(name);
    if (plugin?.kind === 'base-transform') return plugin;
    if (plugin) throw new RegistryError(`[@lora/core] "${name}" is an adapter plugin, not a base transform.`, { plugin: name });
    throw new RegistryError(
      `[@lora/core] No base transform named ${JSON.stringify(name)} is registered (registered: ${registered('base-transform')}). Pass the transform from the package that provides it to createLoraRegistry({ plugins }).`,
      { plugin: String(name) },
    );
  };

  const checkRecipe = (recipe: Recipe): RecipeCheck => {
    const problems: string[] = [];
    const missingPlugins: string[] = [];
    const note = (error: unknown, name: string): void => {
      problems.push((error as Error).message);
      if (!missingPlugins.includes(name)) missingPlugins.push(name);
    };
    let adapterPlugin: AdapterPlugin | undefined;
    try {
      adapterPlugin = adapter(recipe.adapter);
    } catch (error) {
      note(error, recipe.adapter);
    }
    const seen = new Set<string>();
    for (const name of recipe.transforms ?? []) {
      if (seen.has(name)) problems.push(`[@lora/core] Base transform "${name}" is listed twice.`);
      seen.add(name);
      try {
        transform(name);
      } catch (error) {
        note(error, name);
        continue;
      }
      // v2: an adapter wraps any base layer with a dense weight unless it refuses a transform by name.
      const refusals = adapterPlugin?.compatibility?.refusals;
      if (adapterPlugin && refusals && Object.hasOwn(refusals, name)) {
        problems.push(`[@lora/core] Adapter "${adapterPlugin.name}" does not compose with base transform "${name}": ${refusals[name]}`);
      }
    }
    return { ok: problems.length === 0, problems, missingPlugins };
  };

  return {
    plugins: [...byName.values()],
    adapter,
    transform,
    has: (name) => byName.has(name),
    adapterForPeftConfig(json) {
      const peftType = Object.hasOwn(json, 'peft_type') ? json.peft_type : undefined;
      if (typeof peftType !== 'string') {
        throw new RegistryError(`[@lora/core] adapter_config.json: peft_type must be a string, got ${JSON.stringify(peftType) ?? 'nothing'}.`);
      }
      for (const plugin of byName.values()) {
        if (plugin.kind === 'adapter' && plugin.claimsPeftConfig(json)) return plugin;
      }
      const readers = [...byName.values()].filter((plugin) => plugin.kind === 'adapter').map((plugin) => `${plugin.name} (${plugin.packageName})`);
      const what = peftType === 'LORA' && json['use_dora'] === true ? 'peft_type "LORA" with use_dora' : `peft_type ${JSON.stringify(peftType)}`;
      throw new RegistryError(
        `[@lora/core] No registered plugin reads ${what} (registered adapter plugins: ${readers.join(', ') || 'none'}). Register the plugin of the package that saved it.`,
        { plugin: peftType },
      );
    },
    checkRecipe,
    assertRecipe(recipe) {
      const check = checkRecipe(recipe);
      if (!check.ok) throw new RegistryError(check.problems.join('\n'), { plugin: check.missingPlugins[0] });
    },
  };
}
