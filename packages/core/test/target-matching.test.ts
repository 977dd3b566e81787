import { describe, expect, it } from 'vitest';
import { isTargetModule, layerIndexOf, matchPatternKey, type TargetSelection } from '../src/index.js';

const none: TargetSelection = {
  targetModules: null,
  excludeModules: null,
  layersToTransform: null,
  layersPattern: null,
  modulesToSave: null,
};

const names = [
  'model.layers.0.self_attn.q_proj',
  'model.layers.0.self_attn.my_q_proj',
  'model.layers.1.self_attn.q_proj',
  'model.layers.1.self_attn.v_proj',
  'model.layers.12.mlp.down_proj',
  'q_proj',
  'layers.1.q_proj',
  'transformer.h.0.attn.c_proj',
  'transformer.h.0.mlp.c_proj',
  'transformer.h.1.attn.c_attn',
  'classifier',
  'bert.encoder.layer.0.attention.self.query',
];

function matching(selection: Partial<TargetSelection>): string[] {
  return names.filter((name) => isTargetModule(name, { ...none, ...selection }));
}

describe('isTargetModule', () => {
  it('matches a list entry by exact name or by a suffix that starts on a dot', () => {
    expect(matching({ targetModules: ['q_proj'] })).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj', 'q_proj', 'layers.1.q_proj']);
  });

  it('does not match a name that merely ends with the entry text (my_q_proj)', () => {
    expect(isTargetModule('model.layers.0.self_attn.my_q_proj', { ...none, targetModules: ['q_proj'] })).toBe(false);
  });

  it('matches multi-segment entries as dotted suffixes', () => {
    expect(matching({ targetModules: ['attn.c_proj'] })).toEqual(['transformer.h.0.attn.c_proj']);
    expect(matching({ targetModules: ['c_proj'] })).toEqual(['transformer.h.0.attn.c_proj', 'transformer.h.0.mlp.c_proj']);
    expect(matching({ targetModules: ['layers.1.self_attn.v_proj'] })).toEqual(['model.layers.1.self_attn.v_proj']);
  });

  it('treats a string as a regex that must match the whole name', () => {
    expect(matching({ targetModules: 'q_proj' })).toEqual(['q_proj']);
    expect(matching({ targetModules: '.*\\.q_proj' })).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.1.self_attn.q_proj', 'layers.1.q_proj']);
    expect(matching({ targetModules: '.*(q_proj|v_proj)$' })).toEqual([
      'model.layers.0.self_attn.q_proj',
      'model.layers.0.self_attn.my_q_proj',
      'model.layers.1.self_attn.q_proj',
      'model.layers.1.self_attn.v_proj',
      'q_proj',
      'layers.1.q_proj',
    ]);
    expect(matching({ targetModules: '.*proj' })).not.toContain('classifier');
  });

  it('filters by layer index and needs a segment before the layer list', () => {
    // 'q_proj' itself matches by exact equality, which skips the layer filter; 'layers.1.q_proj' has no segment before 'layers'.
    expect(matching({ targetModules: ['q_proj', 'v_proj'], layersToTransform: [1] })).toEqual([
      'model.layers.1.self_attn.q_proj',
      'model.layers.1.self_attn.v_proj',
      'q_proj',
    ]);
    // The exact-equality branch skips the layer filter, as in PEFT.
    expect(isTargetModule('q_proj', { ...none, targetModules: ['q_proj'], layersToTransform: [1] })).toBe(true);
    // Root-level "layers.1.q_proj" has no segment before "layers": never matched by the layer filter.
    expect(isTargetModule('layers.1.q_proj', { ...none, targetModules: ['q_proj'], layersToTransform: 1 })).toBe(false);
    expect(matching({ targetModules: ['down_proj'], layersToTransform: 12, layersPattern: 'layers' })).toEqual(['model.layers.12.mlp.down_proj']);
    expect(matching({ targetModules: ['c_proj'], layersToTransform: [0], layersPattern: ['h'] })).toEqual([
      'transformer.h.0.attn.c_proj',
      'transformer.h.0.mlp.c_proj',
    ]);
    expect(matching({ targetModules: ['c_proj'], layersToTransform: [0], layersPattern: 'blocks' })).toEqual([]);
  });

  it('lets exclude_modules win, as a list or a regex', () => {
    expect(matching({ targetModules: ['c_proj'], excludeModules: ['mlp.c_proj'] })).toEqual(['transformer.h.0.attn.c_proj']);
    expect(matching({ targetModules: ['q_proj'], excludeModules: '.*layers\\.0.*' })).toEqual(['model.layers.1.self_attn.q_proj', 'q_proj', 'layers.1.q_proj']);
  });

  it('never targets a module covered by modules_to_save', () => {
    expect(isTargetModule('classifier', { ...none, targetModules: ['classifier'], modulesToSave: ['classifier'] })).toBe(false);
  });
});

describe('layerIndexOf', () => {
  it('takes the first numbered segment preceded by another segment', () => {
    expect(layerIndexOf('model.layers.12.mlp.down_proj', null)).toBe(12);
    expect(layerIndexOf('bert.encoder.layer.3.attention.self.query', 'layer')).toBe(3);
    expect(layerIndexOf('lm_head', null)).toBeNull();
  });
});

describe('matchPatternKey', () => {
  it('returns the first key matching a dotted suffix that ends the name', () => {
    const pattern = { 'layers.1.self_attn.q_proj': 16, q_proj: 4, '^v_proj': 2 };
    expect(matchPatternKey(pattern, 'model.layers.1.self_attn.q_proj')).toBe('layers.1.self_attn.q_proj');
    expect(matchPatternKey(pattern, 'model.layers.0.self_attn.q_proj')).toBe('q_proj');
    expect(matchPatternKey(pattern, 'model.layers.0.self_attn.v_proj')).toBeUndefined();
    expect(matchPatternKey(pattern, 'v_proj')).toBe('^v_proj');
  });
});
