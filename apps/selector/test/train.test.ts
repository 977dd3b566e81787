import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GPT2, run } from './helpers.js';

describe('lora train', () => {
  let directory: string;
  beforeAll(async () => {
    directory = await mkdtemp(path.join(tmpdir(), 'selector-train-'));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it('adapts the bundled base to the held-out corpus, lowering validation perplexity, and writes the report', async () => {
    const out = path.join(directory, 'default-run');
    const result = await run(['train', '--steps', '60', '--out', out]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('└─▶ LoRA');
    // The backend, and why, comes first.
    expect(result.stdout.split('\n')[0]).toMatch(/^backend: \S+.*: /u);
    const report = JSON.parse(await readFile(path.join(out, 'report.json'), 'utf8')) as {
      before: { validationPerplexity: number };
      after: { validationPerplexity: number };
      losses: number[];
      samples: { before: string; after: string };
    };
    expect(report.after.validationPerplexity).toBeLessThan(report.before.validationPerplexity);
    expect(report.losses).toHaveLength(60);
    expect(report.samples.after.length).toBeGreaterThan(0);
    expect((await readdir(out)).sort()).toEqual(['.lora-output.json', 'adapter', 'report.json', 'report.md', 'run.json']);
    expect((await readdir(path.join(out, 'adapter'))).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const markdown = await readFile(path.join(out, 'report.md'), 'utf8');
    expect(markdown).toContain('## Training loss');
    expect(markdown).toMatch(/\| after \| [\d.]+ \| [\d.]+ \|/u);
    // No staging directories are left behind.
    expect((await readdir(directory)).filter((name) => name.includes('.partial-'))).toEqual([]);
  });

  it('reports a malformed JSONL line by number and leaves no output directory', async () => {
    const data = path.join(directory, 'bad.jsonl');
    await writeFile(data, '{"text": "fine"}\n{"text": "also fine"}\n{"text": broken}\n');
    const out = path.join(directory, 'bad-run');
    const result = await run(['train', '--model', GPT2, '--data', data, '--steps', '2', '--context', '16', '--out', out]);
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(/bad\.jsonl:3: not valid JSON/u);
    expect((await readdir(directory)).filter((name) => name.startsWith('bad-run'))).toEqual([]);
  });

  it('refuses a dataset smaller than one batch', async () => {
    const data = path.join(directory, 'tiny.jsonl');
    await writeFile(data, '{"text": "a short line"}\n{"text": "another short line"}\n');
    const out = path.join(directory, 'tiny-run');
    const result = await run(['train', '--model', GPT2, '--data', data, '--steps', '2', '--context', '16', '--out', out]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/smaller than one batch/u);
    expect((await readdir(directory)).filter((name) => name.startsWith('tiny-run'))).toEqual([]);
  });

  it('refuses a missing model directory', async () => {
    const result = await run(['train', '--model', path.join(directory, 'missing'), '--steps', '2']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/^lora: Model directory .*missing has no readable config\.json/u);
  });

  it.each([
    ['qlora', ['--memory', 'extreme'], 'LORA'],
    ['dora', ['--expressive'], 'LORA (DoRA)'],
    ['adalora', ['--dynamic'], 'ADALORA'],
  ])('composes the %s recipe from its packages and fine-tunes', async (variant, flags, type) => {
    const out = path.join(directory, `${variant}-run`);
    const result = await run(['train', '--model', GPT2, ...flags, '--steps', '8', '--context', '64', '--out', out]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const report = JSON.parse(await readFile(path.join(out, 'report.json'), 'utf8')) as { variant: string; recipe: { transforms: string[] } };
    expect(report.variant).toBe(variant);
    expect(report.recipe.transforms).toEqual(variant === 'qlora' ? ['quant'] : []);
    const inspect = await run(['inspect', path.join(out, 'adapter'), '--json']);
    expect(JSON.parse(inspect.stdout)).toMatchObject({ kind: 'adapter', type });
    // As PEFT does, the adapter names the base it was trained on (absolute, so a resumed run writes the same).
    const config = JSON.parse(await readFile(path.join(out, 'adapter', 'adapter_config.json'), 'utf8')) as { base_model_name_or_path: unknown };
    expect(config.base_model_name_or_path).toBe(path.resolve(GPT2));
  });

  it('trains on a JSONL file (one record longer than a spread call can pass) and saves a loadable adapter', async () => {
    const data = path.join(directory, 'ok.jsonl');
    const lines = Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: `Record ${i}: the quick brown fox jumps over the lazy dog, again and again.` }));
    lines.unshift(JSON.stringify({ text: 'a long record. '.repeat(20_000) }));
    await writeFile(data, `${lines.join('\n')}\n`);
    const out = path.join(directory, 'ok-run');
    const result = await run(['train', '--model', GPT2, '--data', data, '--steps', '5', '--context', '32', '--batch-size', '4', '--out', out]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    const inspect = await run(['inspect', path.join(out, 'adapter'), '--json']);
    expect(JSON.parse(inspect.stdout)).toMatchObject({ kind: 'adapter', type: 'LORA' });
  });
});
