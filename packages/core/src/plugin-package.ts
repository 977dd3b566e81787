import { RegistryError } from './errors.js';
import type { AdapterPlugin, LoraPlugin, PeftConfigJson, PluginDescriptor, PluginPackageDescriptor } from './plugin.js';

/**
 * Define the descriptor a plugin package exports as `pluginPackage`: its npm name and the plugins it
 * provides. Checks that names are unique and that each factory makes the plugin it declares.
 *
 * @throws {RegistryError} on a duplicate name or a factory whose plugin differs from its entry.
 * @example
 * export const pluginPackage = definePluginPackage({
 *   packageName: '@lora/dora',
 *   plugins: [{ name: 'dora', kind: 'adapter', peftTypes: ['LORA'], summary: 'DoRA', create: dora }],
 * });
 */
export function definePluginPackage(descriptor: PluginPackageDescriptor): PluginPackageDescriptor {
  const seen = new Set<string>();
  for (const entry of descriptor.plugins) {
    if (seen.has(entry.name)) {
      throw new RegistryError(`[@lora/core] ${descriptor.packageName} lists plugin "${entry.name}" twice.`, { packageName: descriptor.packageName });
    }
    seen.add(entry.name);
  }
  return Object.freeze({ packageName: descriptor.packageName, plugins: Object.freeze([...descriptor.plugins]) });
}

/** Make the plugin a descriptor entry declares (with factory options), checking it is what the entry says. @throws {RegistryError} */
export function createDescribedPlugin(descriptor: PluginPackageDescriptor, entry: PluginDescriptor, options?: unknown): LoraPlugin {
  const plugin = options === undefined ? entry.create() : entry.create(options);
  if (plugin.name !== entry.name || plugin.kind !== entry.kind || plugin.packageName !== descriptor.packageName) {
    throw new RegistryError(
      `[@lora/core] ${descriptor.packageName}'s descriptor lists ${entry.kind} "${entry.name}", but its factory made ${plugin.kind} "${plugin.name}" of ${plugin.packageName}.`,
      { packageName: descriptor.packageName, plugin: entry.name },
    );
  }
  return plugin;
}

/**
 * The plugin among `packages` that reads a saved `adapter_config.json`: the first adapter plugin
 * declaring its `peft_type` whose `claimsPeftConfig` accepts it. Null when none does.
 */
export function findPluginForPeftConfig(
  packages: readonly PluginPackageDescriptor[],
  json: PeftConfigJson,
): {
  /** The package that provides the plugin. */
  readonly descriptor: PluginPackageDescriptor;
  /** The package's entry for the plugin. */
  readonly entry: PluginDescriptor;
  /** The plugin, made by the entry's factory with default options. */
  readonly plugin: AdapterPlugin;
} | null {
  const peftType = Object.hasOwn(json, 'peft_type') ? json.peft_type : undefined;
  if (typeof peftType !== 'string') return null;
  for (const descriptor of packages) {
    for (const entry of descriptor.plugins) {
      if (entry.kind !== 'adapter' || !entry.peftTypes.includes(peftType)) continue;
      const plugin = createDescribedPlugin(descriptor, entry) as AdapterPlugin;
      if (plugin.claimsPeftConfig(json)) return { descriptor, entry, plugin };
    }
  }
  return null;
}
