import { ConfigError } from './errors.js';
import type { TargetSelection } from './plugin.js';

const compiled = new Map<string, RegExp>();

/**
 * Compile a pattern from a config; a config built without its schema can still hold an invalid
 * one, which is a ConfigError naming the field rather than a raw SyntaxError.
 */
function compile(source: string, field: string, pattern: string): RegExp {
  let regex = compiled.get(source);
  if (!regex) {
    try {
      regex = new RegExp(source, 'u');
    } catch (error) {
      throw new ConfigError({ field, received: pattern, expected: 'a valid regular expression', cause: error });
    }
    if (compiled.size > 1000) compiled.clear();
    compiled.set(source, regex);
  }
  return regex;
}

function fullMatch(pattern: string, text: string, field: string): boolean {
  return compile(`^(?:${pattern})$`, field, pattern).test(text);
}

function matchesListEntry(key: string, entry: string): boolean {
  return key === entry || key.endsWith(`.${entry}`);
}

/** The first numbered layer index in `key`, as PEFT finds it (see {@link isTargetModule}). */
export function layerIndexOf(key: string, layersPattern: string | readonly string[] | null): number | null {
  const patterns = layersPattern === null ? [null] : typeof layersPattern === 'string' ? [layersPattern] : layersPattern;
  for (const pattern of patterns) {
    // PEFT uses re.match (anchored at the start) with a lazy prefix; both forms need a segment before the list name.
    const regex = pattern === null ? /^.*?\.[^.]*\.(\d+)\./u : compile(`^.*?\\.${pattern}\\.(\\d+)\\.`, 'layersPattern', pattern);
    const match = regex.exec(key);
    if (match) return Number(match[1]);
  }
  return null;
}

/** Whether `key` is covered by a `modules_to_save` entry (PEFT never targets those). */
export function isCoveredByModulesToSave(key: string, modulesToSave: readonly string[] | null): boolean {
  if (!modulesToSave) return false;
  return modulesToSave.some((entry) => compile(`^(?:|.*\\.)${entry}(?:$|\\..*)`, 'modulesToSave', entry).test(key));
}

/** Whether `key` is excluded by `excludeModules`. */
export function isExcludedModule(key: string, excludeModules: readonly string[] | string | null): boolean {
  if (excludeModules === null) return false;
  if (typeof excludeModules === 'string') return fullMatch(excludeModules, key, 'excludeModules');
  return excludeModules.some((entry) => matchesListEntry(key, entry));
}

/**
 * PEFT's `check_target_module_exists`, exactly:
 * 1. `excludeModules` wins (string: full regex match; list: equal or `.`-suffix);
 * 2. a module covered by `modulesToSave` is never targeted;
 * 3. a string `targetModules` must match the whole dotted name as a regex;
 * 4. a list entry matches a name equal to it (no layer filter) or ending in `.` + entry, which is then
 *    kept only if its layer index (first `<name>.<digits>.` segment, or `<layersPattern>.<digits>.`)
 *    is in `layersToTransform`.
 *
 * `all-linear` must be expanded to full names before calling this.
 */
export function isTargetModule(key: string, selection: TargetSelection): boolean {
  if (isExcludedModule(key, selection.excludeModules)) return false;
  if (isCoveredByModulesToSave(key, selection.modulesToSave)) return false;
  const targets = selection.targetModules;
  if (targets === null) return false;
  if (typeof targets === 'string') return fullMatch(targets, key, 'targetModules');
  for (const entry of targets) {
    if (key === entry) return true;
    if (!key.endsWith(`.${entry}`)) continue;
    if (selection.layersToTransform === null) return true;
    const index = layerIndexOf(key, selection.layersPattern);
    if (index === null) return false;
    const wanted = selection.layersToTransform;
    return typeof wanted === 'number' ? index === wanted : wanted.includes(index);
  }
  return false;
}

/**
 * PEFT's `get_pattern_key`: the first key of `pattern` (in insertion order) that matches a dotted
 * suffix of `modulePath` ending at its end, or undefined.
 */
export function matchPatternKey(pattern: Readonly<Record<string, unknown>>, modulePath: string): string | undefined {
  for (const key of Object.keys(pattern)) {
    if (compile(`^(?:.*\\.)?(?:${key})$`, 'rankPattern/alphaPattern', key).test(modulePath)) return key;
  }
  return undefined;
}
