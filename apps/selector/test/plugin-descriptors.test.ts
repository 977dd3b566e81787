import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, createLoraRegistry, initRuntime, saveAdapter } from '@lora/core';
import { doubleLora } from '@lora/dora';
import { loadPretrained, type AnyPretrainedModel } from '@lora/models';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { maxAbsoluteError } from '@lora/core/testing';
// @ts-expect-error -- a plain-JS third-party package without type declarations
import { toy } from '@lora-internal/toy-plugin';
import { GPT2, run } from './helpers.js';

const INPUT = { input_ids: [[48, 212, 39, 54, 205], [250, 144, 178, 24, 234]] };
const flat = (value: unknown): number[] => (Array.isArray(value) ? value.flatMap(flat) : [value as number]);
const maxAbsDiff = (a: unknown, b: unknown): number => maxAbsoluteError(flat(a), flat(b));

/** Give every adapter variable random values so the adapter changes the logits. */
function randomize(adapterModel: AdapterModel): void {
  let seed = 1;
  for (const [, instance] of adapterModel.adapterInstances('default')) {
    for (const [, variable] of instance.namedTensors()) tf.tidy(() => variable.assign(tf.randomNormal(variable.shape, 0, 0.05, 'float32', seed++)));
  }
}

function logitsOf(model: AnyPretrainedModel, adapterInputs?: Record<string, unknown>): number[] {
  return tf.tidy(() => {
    const ids = tf.tensor2d(INPUT.input_ids, undefined, 'int32');
    const logits = model.withAdapterInputs(adapterInputs, () => (model as unknown as { forward(ids: tf.Tensor): tf.Tensor }).forward(ids));
    return flat(logits.arraySync());
  });
}

describe('adapters found through plugin descriptors (plugin interface v2)', () => {
  let directory: string;
  let inputFile: string;
  const forward = async (adapter: string, extra: string[] = [], input: object = INPUT) => {
    const file = path.join(directory, `in-${Math.random()}.json`);
    const out = path.join(directory, `out-${Math.random()}.json`);
    await writeFile(file, JSON.stringify(input));
    const result = await run(['forward', '--model', GPT2, '--adapter', adapter, ...extra, '--input', file, '--out', out]);
    return { result, logits: result.code === 0 ? (JSON.parse(await readFile(out, 'utf8')) as { logits: unknown }).logits : null };
  };

  beforeAll(async () => {
    await initRuntime();
    directory = await mkdtemp(path.join(tmpdir(), 'selector-descriptors-'));
    inputFile = path.join(directory, 'input.json');
    await writeFile(inputFile, JSON.stringify(INPUT));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it('loads a doubleLora() adapter in forward, merge, generate and inspect', async () => {
    const model = await loadPretrained(GPT2);
    const adapterModel = AdapterModel.create(model, {
      registry: createLoraRegistry({ plugins: [doubleLora({ seed: 3 })] }),
      plugin: 'double-lora',
      config: { r1: 4, loraAlpha1: 8, r2: 2, loraAlpha2: 2, targetModules: ['c_attn'] },
    });
    randomize(adapterModel);
    model.eval();
    const adapterDirectory = path.join(directory, 'double');
    await saveAdapter(adapterModel, adapterDirectory);
    const expected = logitsOf(model);
    const base = adapterModel.disableAdapters(() => logitsOf(model));
    const targets = adapterModel.adapterLayers().length;
    adapterModel.dispose();

    const { result, logits } = await forward(adapterDirectory);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(maxAbsDiff(logits, expected)).toBeLessThan(1e-5);
    expect(maxAbsDiff(logits, base)).toBeGreaterThan(1e-3);

    const merged = path.join(directory, 'merged');
    const mergeResult = await run(['merge', '--model', GPT2, '--adapter', adapterDirectory, '--out', merged]);
    expect(mergeResult.code).toBe(0);
    const mergedOut = path.join(directory, 'merged-logits.json');
    expect((await run(['forward', '--model', merged, '--input', inputFile, '--out', mergedOut])).code).toBe(0);
    expect(maxAbsDiff((JSON.parse(await readFile(mergedOut, 'utf8')) as { logits: unknown }).logits, expected)).toBeLessThan(1e-4);

    const generated = await run(['generate', '--model', GPT2, '--adapter', adapterDirectory, '--prompt', 'Hello', '--max-new-tokens', '3', '--greedy']);
    expect(generated.code).toBe(0);
    expect(generated.stdout.startsWith('Hello')).toBe(true);

    const inspected = await run(['inspect', adapterDirectory, '--json']);
    expect(inspected.code).toBe(0);
    const report = JSON.parse(inspected.stdout) as { type: string; reader: string; targets: { module: string; rank: number }[] };
    expect(report.type).toBe('DOUBLE_LORA');
    expect(report.reader).toBe('double-lora (@lora/dora)');
    expect(report.targets).toHaveLength(targets);
    expect(new Set(report.targets.map((target) => target.rank))).toEqual(new Set([6]));
  });

  it('handles a third-party plugin package named with --plugin, with per-forward adapter inputs', async () => {
    const model = await loadPretrained(GPT2);
    const adapterModel = AdapterModel.create(model, {
      registry: createLoraRegistry({ plugins: [toy({ seed: 2 })] }),
      plugin: 'toy',
      config: { targetModules: ['c_attn'] },
    });
    randomize(adapterModel);
    model.eval();
    const adapterDirectory = path.join(directory, 'toy');
    await saveAdapter(adapterModel, adapterDirectory);
    const adapterInputs = { toyGain: [0.5, 2] };
    const expected = logitsOf(model, adapterInputs);
    const targets = adapterModel.adapterLayers().map(([modulePath]) => modulePath);
    adapterModel.dispose();

    const { result, logits } = await forward(adapterDirectory, ['--plugin', '@lora-internal/toy-plugin'], { ...INPUT, adapter_inputs: adapterInputs });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(maxAbsDiff(logits, expected)).toBeLessThan(1e-5);

    const inspected = await run(['inspect', adapterDirectory, '--json', '--plugin', '@lora-internal/toy-plugin']);
    const report = JSON.parse(inspected.stdout) as { reader: string; targets: { module: string; rank: number }[] };
    expect(report.reader).toBe('toy (@lora-internal/toy-plugin)');
    expect(report.targets.map((target) => target.module).sort()).toEqual([...targets].sort());
    expect(report.targets.every((target) => target.rank === 1)).toBe(true);

    // Without --plugin nothing installed reads it: one line, exit 2, the file named, no stack trace.
    const refused = await forward(adapterDirectory);
    expect(refused.result.code).toBe(2);
    expect(refused.result.stderr.trim().split('\n')).toHaveLength(1);
    expect(refused.result.stderr).toContain(path.join(adapterDirectory, 'adapter_config.json'));
    expect(refused.result.stderr).toContain('--plugin');
  });
});

describe('no hand-written variant → package table', () => {
  const root = path.resolve(__dirname, '../../..');
  const variantPackages = /@lora\/(dora|quant|adalora|hyper)\b/u;
  // Where naming a variant package is allowed: each package's own descriptor, and the flowchart's recipe table.
  const allowed = new Set(['apps/selector/src/recipe.ts']);

  async function sources(directory: string): Promise<string[]> {
    const entries = await readdir(path.join(root, directory), { withFileTypes: true, recursive: true });
    return entries.filter((entry) => entry.isFile() && entry.name.endsWith('.ts')).map((entry) => path.relative(root, path.join(entry.parentPath, entry.name)));
  }

  it('finds variant package names in the code of core, models and the selector only in the recipe table', async () => {
    const offenders: string[] = [];
    for (const file of [...(await sources('packages/core/src')), ...(await sources('packages/models/src')), ...(await sources('apps/selector/src'))]) {
      if (allowed.has(file) || file.endsWith('plugin-package.ts')) continue;
      // Comments may mention packages (documentation); code and strings may not.
      const code = (await readFile(path.join(root, file), 'utf8')).replace(/\/\*[\s\S]*?\*\//gu, '').replace(/(^|[^:'"`])\/\/.*$/gmu, '$1');
      code.split('\n').forEach((line, index) => {
        if (variantPackages.test(line)) offenders.push(`${file}:${index + 1}: ${line.trim()}`);
      });
    }
    expect(offenders).toEqual([]);
  });
});
