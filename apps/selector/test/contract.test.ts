import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readSafetensorsFile, writeSafetensorsFile } from '@lora/core';
import { BERT, FIXTURES, GPT2, run } from './helpers.js';

describe('the lora CLI contract', () => {
  let directory: string;
  beforeAll(async () => {
    directory = await mkdtemp(path.join(tmpdir(), 'selector-contract-'));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it.each([
    [['train', '--seed', 'abc'], /--seed must be an integer from 0 to 4294967295, got "abc"/u],
    [['train', '--steps', '1.5'], /--steps must be an integer >= 1, got "1\.5"/u],
    [['train', '--learning-rate', '-1'], /--learning-rate must be a finite number > 0, got "-1"/u],
    [['generate', '--prompt', 'x', '--top-k', 'abc'], /--top-k must be an integer >= 1, got "abc"/u],
    [['generate', '--prompt', 'x', '--top-p', '2'], /--top-p must be a finite number > 0 and <= 1, got "2"/u],
    [['generate', '--prompt', 'x', '--temperature', 'NaN'], /--temperature must be a finite number > 0, got "NaN"/u],
    [['quantize', '--model', 'm', '--out', 'o', '--block-size', '0'], /--block-size must be an integer >= 1, got "0"/u],
  ])('rejects %j with exit 2, naming the option', async (argv, message) => {
    const result = await run(argv);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
  });

  it('prints one JSON document on stdout with --json, also for an error', async () => {
    const bad = await run(['select', '--json', '--steps', 'x']);
    expect(bad.code).toBe(2);
    expect(JSON.parse(bad.stdout)).toMatchObject({ error: { exitCode: 2 } });
    const missing = await run(['select', '--json', '--model', path.join(directory, 'nope')]);
    expect(missing.code).toBe(2);
    expect(JSON.parse(missing.stdout)).toMatchObject({ error: { exitCode: 2, message: expect.stringMatching(/no readable config\.json/u) } });
  });

  it('lets a flag win over the config file, even at its default value', async () => {
    const config = path.join(directory, 'selector.json');
    await writeFile(config, JSON.stringify({ memory: 'ample', dynamic: true, compute: 'limited', steps: 40 }));
    const fromFile = JSON.parse((await run(['select', '--model', GPT2, '--config', config, '--json'])).stdout) as { recipe: { config: { total_step: number } } };
    expect(fromFile.recipe.config.total_step).toBe(40);
    const flag = JSON.parse((await run(['select', '--model', GPT2, '--config', config, '--steps', '300', '--json'])).stdout) as { recipe: { config: { total_step: number } } };
    expect(flag.recipe.config.total_step).toBe(300);
  });

  it('prints --version and marks required options in --help', async () => {
    const version = await run(['--version']);
    expect(version.code).toBe(0);
    const pkg = JSON.parse(await readFile(path.resolve(__dirname, '../package.json'), 'utf8')) as { version: string };
    expect(version.stdout.trim()).toBe(`lora ${pkg.version}`);
    const help = await run(['forward', '--help']);
    expect(help.code).toBe(0);
    for (const option of ['--input <in.json>', '--out <out.json>']) {
      expect(help.stdout).toMatch(new RegExp(`${option.replace(/[.*+?^${}()|[\]\\]/gu, '\\$&')}[^\\n]*\\(required\\)`, 'u'));
    }
    // --model defaults to the bundled base, so it is not marked required.
    expect(help.stdout).toMatch(/--model <dir>\s+Hugging Face model directory \(default:\s+the\s+bundled base\)/u);
  });

  it('names the file in inspect errors', async () => {
    const adapter = path.join(directory, 'broken-adapter');
    await cp(path.join(FIXTURES, 'adapters/gpt2_lora'), adapter, { recursive: true });
    const file = path.join(adapter, 'adapter_model.safetensors');
    await writeFile(file, (await readFile(file)).subarray(0, 50));
    const result = await run(['inspect', adapter]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(file);
    await writeFile(path.join(adapter, 'adapter_config.json'), '{ not json');
    const config = await run(['inspect', adapter]);
    expect(config.code).toBe(2);
    expect(config.stderr).toContain(path.join(adapter, 'adapter_config.json'));
  });

  it('says in one short line that an adapter was made for another base model', async () => {
    const input = path.join(directory, 'in.json');
    await writeFile(input, JSON.stringify({ input_ids: [[1, 2, 3]] }));
    const result = await run(['forward', '--model', BERT, '--adapter', path.join(FIXTURES, 'adapters/gpt2_lora'), '--input', input, '--out', path.join(directory, 'out.json')]);
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr.length).toBeLessThan(400);
    expect(result.stderr).toMatch(/^lora: Adapter .*gpt2_lora targets \["c_attn","c_proj"\], which the model in .*bert does not have \(it was made for base model ".*"\)\. Pass the --model it was trained on\.\n$/u);
  });

  it('refuses NaN adapter and model weights (exit 2, naming file and tensor) unless --allow-non-finite', async () => {
    const adapter = path.join(directory, 'nan-adapter');
    await cp(path.join(FIXTURES, 'adapters/gpt2_lora'), adapter, { recursive: true });
    const file = path.join(adapter, 'adapter_model.safetensors');
    const parsed = await readSafetensorsFile(file);
    const [key, entry] = [...parsed.tensors].find(([name]) => name.includes('lora_B'))!;
    const values = new Float32Array(entry.data.slice().buffer);
    values[0] = Number.NaN;
    await writeSafetensorsFile(file, new Map([...parsed.tensors, [key, { ...entry, data: new Uint8Array(values.buffer) }]]));
    const input = path.join(directory, 'in-nan.json');
    await writeFile(input, JSON.stringify({ input_ids: [[1, 2, 3]] }));
    const out = path.join(directory, 'out-nan.json');
    const refused = await run(['forward', '--model', GPT2, '--adapter', adapter, '--input', input, '--out', out]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(file);
    expect(refused.stderr).toContain(key);
    expect(refused.stderr).toMatch(/non-finite value/u);
    const merged = await run(['merge', '--model', GPT2, '--adapter', adapter, '--out', path.join(directory, 'nan-merged')]);
    expect(merged.code).toBe(2);
    // Opted in: it loads, and the non-finite logits are said, not silently written as null.
    const allowed = await run(['forward', '--model', GPT2, '--adapter', adapter, '--input', input, '--out', out, '--allow-non-finite']);
    expect(allowed.stderr).not.toMatch(/non-finite value/u);
    const model = path.join(directory, 'nan-model');
    await cp(GPT2, model, { recursive: true });
    const weights = await readSafetensorsFile(path.join(model, 'model.safetensors'));
    const [name, first] = [...weights.tensors].find(([, e]) => e.dtype === 'F32')!;
    const bad = new Float32Array(first.data.slice().buffer);
    bad[0] = Number.POSITIVE_INFINITY;
    await writeSafetensorsFile(path.join(model, 'model.safetensors'), new Map([...weights.tensors, [name, { ...first, data: new Uint8Array(bad.buffer) }]]));
    const badModel = await run(['forward', '--model', model, '--input', input, '--out', out]);
    expect(badModel.code).toBe(2);
    expect(badModel.stderr).toMatch(new RegExp(`tensor "${name.replace(/\./gu, '\\.')}" holds 1 non-finite value`, 'u'));
  });
});
