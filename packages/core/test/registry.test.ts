import { describe, expect, it } from 'vitest';
import {
  createLoraRegistry,
  definePluginPackage,
  findPluginForPeftConfig,
  lora,
  pluginPackage,
  PLUGIN_SPECIFICATION_VERSION,
  RegistryError,
  type AdapterPlugin,
  type BaseTransform,
} from '../src/index.js';

const fakeTransform: BaseTransform = {
  specificationVersion: PLUGIN_SPECIFICATION_VERSION,
  kind: 'base-transform',
  name: 'quant',
  packageName: '@lora/quant',
  shouldTransform: () => false,
  transform: (module) => module,
};

function fakeAdapter(name: string, refusals: Record<string, string> = {}): AdapterPlugin {
  return { ...lora(), name, packageName: `@lora/${name}`, compatibility: { refusals } };
}

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  return undefined;
}

describe('createLoraRegistry', () => {
  it('looks plugins up by name', () => {
    const registry = createLoraRegistry({ plugins: [lora(), fakeTransform] });
    expect(registry.adapter('lora').peftType).toBe('LORA');
    expect(registry.transform('quant').name).toBe('quant');
    expect(registry.has('dora')).toBe(false);
  });

  it('throws on duplicate names', () => {
    expect(() => createLoraRegistry({ plugins: [lora(), lora()] })).toThrow(/Two plugins are named "lora"/u);
  });

  it('refuses a plugin of the v1 specification with a clear error', () => {
    const old = { ...lora(), specificationVersion: 'v1' } as unknown as AdapterPlugin;
    expect(() => createLoraRegistry({ plugins: [old] })).toThrow(/specification v1, but this @lora\/core supports v2/u);
  });

  it('names what is registered for an unknown plugin, and suggests no package it cannot know', () => {
    const registry = createLoraRegistry({ plugins: [lora()] });
    const error = caught(() => registry.adapter('dora'));
    expect(error).toBeInstanceOf(RegistryError);
    expect((error as Error).message).toContain('registered: lora (@lora/core)');
    expect((error as Error).message).not.toMatch(/pnpm add|npm i/u);
  });

  it('looks names up as own entries only (no prototype properties)', () => {
    const registry = createLoraRegistry({ plugins: [lora()] });
    for (const name of ['toString', '__proto__', 'constructor', 'hasOwnProperty']) {
      expect(registry.has(name)).toBe(false);
      expect(caught(() => registry.adapter(name))).toBeInstanceOf(RegistryError);
      const error = caught(() => registry.adapterForPeftConfig({ peft_type: name }));
      expect(error).toBeInstanceOf(RegistryError);
      expect((error as Error).message).not.toContain('native code');
    }
  });

  it('says which saved adapter type it cannot read', () => {
    const registry = createLoraRegistry({ plugins: [lora()] });
    expect(() => registry.adapterForPeftConfig({ peft_type: 'ADALORA' })).toThrow(/No registered plugin reads peft_type "ADALORA"/u);
    expect(() => registry.adapterForPeftConfig({ peft_type: 'LORA', use_dora: true })).toThrow(/use_dora/u);
    expect(registry.adapterForPeftConfig({ peft_type: 'LORA', use_dora: false }).name).toBe('lora');
  });

  it('composes any adapter with any base transform by default (QLoRA)', () => {
    const registry = createLoraRegistry({ plugins: [lora(), fakeTransform] });
    expect(registry.checkRecipe({ adapter: 'lora', transforms: ['quant'] })).toEqual({ ok: true, problems: [], missingPlugins: [] });
  });

  it('explains why a recipe is refused', () => {
    const registry = createLoraRegistry({
      plugins: [fakeAdapter('adalora', { quant: 'AdaLoRA is not combined with QLoRA (variant guide)' }), fakeTransform],
    });
    const check = registry.checkRecipe({ adapter: 'adalora', transforms: ['quant'] });
    expect(check.ok).toBe(false);
    expect(check.problems[0]).toMatch(/does not compose with base transform "quant": AdaLoRA is not combined with QLoRA/u);
    expect(() => registry.assertRecipe({ adapter: 'adalora', transforms: ['quant'] })).toThrow(RegistryError);
  });

  it('lists the plugins a recipe needs but the registry lacks', () => {
    const registry = createLoraRegistry({ plugins: [lora()] });
    const check = registry.checkRecipe({ adapter: 'lora', transforms: ['quant'] });
    expect(check.ok).toBe(false);
    expect(check.missingPlugins).toEqual(['quant']);
    expect(caught(() => registry.assertRecipe({ adapter: 'hyper' }))).toBeInstanceOf(RegistryError);
  });
});

describe('plugin package descriptors', () => {
  it("describes core's LoRA plugin and finds it for a saved LoRA config", () => {
    expect(pluginPackage.packageName).toBe('@lora/core');
    const found = findPluginForPeftConfig([pluginPackage], { peft_type: 'LORA' });
    expect(found?.plugin.name).toBe('lora');
    expect(findPluginForPeftConfig([pluginPackage], { peft_type: 'LORA', use_dora: true })).toBeNull();
    expect(findPluginForPeftConfig([pluginPackage], { peft_type: 'toString' })).toBeNull();
  });

  it('refuses a descriptor listing a plugin twice', () => {
    const entry = pluginPackage.plugins[0]!;
    expect(() => definePluginPackage({ packageName: '@x/y', plugins: [entry, entry] })).toThrow(RegistryError);
  });
});
