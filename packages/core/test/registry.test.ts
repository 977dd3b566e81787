import { describe, expect, it } from 'vitest';
import { createLoraRegistry, lora, RegistryError, type AdapterPlugin, type BaseTransform } from '../src/index.js';

const fakeTransform: BaseTransform = {
  specificationVersion: 'v1',
  kind: 'base-transform',
  name: 'quant',
  packageName: '@lora/quant',
  shouldTransform: () => false,
  transform: (module) => module,
};

function fakeAdapter(name: string, transforms: string[], refusals: Record<string, string> = {}): AdapterPlugin {
  return { ...lora(), name, packageName: `@lora/${name}`, compatibility: { transforms, refusals } };
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

  it('refuses a plugin of another specification version', () => {
    const future = { ...lora(), specificationVersion: 'v2' } as unknown as AdapterPlugin;
    expect(() => createLoraRegistry({ plugins: [future] })).toThrow(/specification v2/u);
  });

  it('names the package to install for an unknown plugin', () => {
    const registry = createLoraRegistry({ plugins: [lora()] });
    let caught: unknown;
    try {
      registry.adapter('dora');
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(RegistryError);
    expect((caught as RegistryError).packageName).toBe('@lora/dora');
    expect((caught as Error).message).toContain('pnpm add @lora/dora');
  });

  it('names the package for a saved adapter type it cannot read', () => {
    const registry = createLoraRegistry({ plugins: [lora()] });
    expect(() => registry.adapterForPeftConfig({ peft_type: 'ADALORA' })).toThrow(/@lora\/adalora/u);
    expect(() => registry.adapterForPeftConfig({ peft_type: 'LORA', use_dora: true })).toThrow(/DoRA.*@lora\/dora/u);
    expect(registry.adapterForPeftConfig({ peft_type: 'LORA', use_dora: false }).name).toBe('lora');
  });

  it('accepts a recipe whose adapter composes with its transforms (QLoRA)', () => {
    const registry = createLoraRegistry({ plugins: [lora(), fakeTransform] });
    expect(registry.checkRecipe({ adapter: 'lora', transforms: ['quant'] })).toEqual({ ok: true, problems: [], missingPackages: [] });
  });

  it('explains why a recipe is refused', () => {
    const registry = createLoraRegistry({
      plugins: [fakeAdapter('adalora', [], { quant: 'AdaLoRA is not combined with QLoRA (variant guide)' }), fakeTransform],
    });
    const check = registry.checkRecipe({ adapter: 'adalora', transforms: ['quant'] });
    expect(check.ok).toBe(false);
    expect(check.problems[0]).toMatch(/does not compose with base transform "quant": AdaLoRA is not combined with QLoRA/u);
    expect(() => registry.assertRecipe({ adapter: 'adalora', transforms: ['quant'] })).toThrow(RegistryError);
  });

  it('lists the packages a recipe needs but the registry lacks', () => {
    const registry = createLoraRegistry({ plugins: [lora()] });
    const check = registry.checkRecipe({ adapter: 'lora', transforms: ['quant'] });
    expect(check.ok).toBe(false);
    expect(check.missingPackages).toEqual(['@lora/quant']);
    let caught: unknown;
    try {
      registry.assertRecipe({ adapter: 'hyper' });
    } catch (error) {
      caught = error;
    }
    expect((caught as RegistryError).packageName).toBe('@lora/hyper');
  });
});
