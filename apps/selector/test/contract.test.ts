import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CheckpointError, ConfigError, readSafetensorsFile, SafetensorsError, TrainingError, writeSafetensorsFile } from '@lora/core';
import { buildProgram } from '../src/index.js';
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
    [['select', '--model', GPT2, '--steps', '2', '--multi-task', '--compute', 'limited'], /^lora: AdaLoRA needs --steps 3 or more \(its rank schedule warms up, prunes and settles over one step each at least\), got 2\.\n$/u],
    [['quantize', '--model', GPT2, '--out', 'never-written', '--block-size', '7'], /^lora: --block-size must be one of 32, 64, 128, 256, 512, 1024, 2048, 4096, got 7\.\n$/u],
    [['generate', '--model', GPT2, '--adapter', `${FIXTURES}/adapters/gpt2_lora`, '--adapter', `${FIXTURES}/adapters/gpt2_lora/`, '--prompt', 'x'], /--adapter .*gpt2_lora\/ is given twice; each adapter is applied once, so pass it once\.\n$/u],
    [['train', '--resume', 'no-such-run', '--steps', '3', '--learning-rate', '0.1'], /^lora: --resume continues a run with its own settings; drop --steps, --learning-rate\.\n$/u],
    [['generate', '--prompt', 'x', '--greedy', '--temperature', '2'], /^lora: option '--greedy' cannot be used with option '--temperature <t>' \(run with --help for usage\)\n$/u],
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
    // Every command's mandatory options say so in their help.
    const program = buildProgram({ stdout: new PassThrough(), stderr: new PassThrough(), stdin: new PassThrough(), interactive: false });
    const mandatory = program.commands.flatMap((command) => command.options.filter((option) => option.mandatory).map((option) => [command.name(), option.flags, option.description] as const));
    expect(mandatory.length).toBeGreaterThan(6);
    for (const [command, flags, description] of mandatory) expect(description, `${command} ${flags}`).toMatch(/^\(required\) /u);
  });

  it('prints a command\'s help with lora help <command>, and refuses an unknown command there in one line (exit 2)', async () => {
    const train = await run(['help', 'train']);
    expect(train.code).toBe(0);
    expect(train.stderr).toBe('');
    expect(train.stdout).toMatch(/^Usage: lora train \[options\]\n/u);
    const overview = await run(['help']);
    expect(overview.code).toBe(0);
    expect(overview.stdout).toMatch(/^Usage: lora \[options\] \[command\]\n/u);
    // Commander's own help command printed the whole help, on stderr and without a word on what was wrong.
    const unknown = await run(['help', 'bogus']);
    expect(unknown.code).toBe(2);
    expect(unknown.stdout).toBe('');
    expect(unknown.stderr).toBe('lora: Unknown command "bogus" for lora help; the commands are select, train, forward, merge, quantize, doctor, inspect, generate, export (lora --help describes them).\n');
    // A mistyped command is suggested, as commander suggests one for `lora <command>`.
    const typo = await run(['help', 'trian']);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toBe('lora: Unknown command "trian" for lora help (Did you mean train?); the commands are select, train, forward, merge, quantize, doctor, inspect, generate, export (lora --help describes them).\n');
    expect((await run(['help', 'quantise'])).stderr).toMatch(/\(Did you mean quantize\?\)/u);
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
    expect(allowed.code).toBe(0);
    expect(allowed.stderr).toBe(`lora: warning: some logits are not finite (NaN or Infinity), written as null in ${out}: the weights loaded with --allow-non-finite reach the output.\n`);
    // Loading them may be allowed; writing them never is: the merged model is refused and nothing is written.
    const mergedAnyway = await run(['merge', '--model', GPT2, '--adapter', adapter, '--out', path.join(directory, 'nan-merged'), '--allow-non-finite']);
    expect(mergedAnyway.code).toBe(2);
    expect(mergedAnyway.stderr.trim().split('\n')).toHaveLength(1);
    expect(mergedAnyway.stderr).toContain(`lora: Not writing the merged model to ${path.join(directory, 'nan-merged')}: tensor "`);
    expect(mergedAnyway.stderr).toMatch(/holds \d+ non-finite values? \(first: NaN\); nothing was written\. Merge finite weights/u);
    expect((await readdir(directory)).filter((name) => name.startsWith('nan-merged'))).toEqual([]);
    const model = path.join(directory, 'nan-model');
    await cp(GPT2, model, { recursive: true });
    const weights = await readSafetensorsFile(path.join(model, 'model.safetensors'));
    const [name, first] = [...weights.tensors].find(([, e]) => e.dtype === 'F32')!;
    const bad = new Float32Array(first.data.slice().buffer);
    bad[0] = Number.POSITIVE_INFINITY;
    await writeSafetensorsFile(path.join(model, 'model.safetensors'), new Map([...weights.tensors, [name, { ...first, data: new Uint8Array(bad.buffer) }]]));
    const badModel = await run(['forward', '--model', model, '--input', input, '--out', out, '--overwrite']);
    expect(badModel.code).toBe(2);
    expect(badModel.stderr).toMatch(new RegExp(`tensor "${name.replace(/\./gu, '\\.')}" holds 1 non-finite value`, 'u'));
  });

  it('refuses a 4-bit checkpoint holding a non-finite weight in one line (exit 2) unless --allow-non-finite', async () => {
    const quantized = path.join(directory, 'q4-nan');
    expect((await run(['quantize', '--model', GPT2, '--out', quantized])).code).toBe(0);
    const file = path.join(quantized, 'model.safetensors');
    const weights = await readSafetensorsFile(file);
    const [name, bias] = [...weights.tensors].find(([key, entry]) => entry.dtype === 'F32' && key.endsWith('.bias'))!;
    const bad = new Float32Array(bias.data.slice().buffer);
    bad[0] = Number.NaN;
    await writeSafetensorsFile(file, new Map([...weights.tensors, [name, { ...bias, data: new Uint8Array(bad.buffer) }]]), weights.metadata);
    const input = path.join(directory, 'in-q4.json');
    await writeFile(input, JSON.stringify({ input_ids: [[1, 2, 3]] }));
    const out = path.join(directory, 'out-q4.json');
    const refused = await run(['forward', '--model', quantized, '--input', input, '--out', out]);
    expect(refused.code).toBe(2);
    expect(refused.stderr.trim().split('\n')).toHaveLength(1);
    expect(refused.stderr).toMatch(new RegExp(`^lora: Model ${quantized.replace(/[.*+?^${}()|[\]\\]/gu, '\\$&')} does not load: .*tensor "${name.replace(/\./gu, '\\.')}" holds 1 non-finite value`, 'u'));
    const allowed = await run(['forward', '--model', quantized, '--input', input, '--out', out, '--allow-non-finite']);
    expect(allowed.code).toBe(0);
  });

  it('writes forward\'s logits only to a new file, or with --overwrite over logits it wrote: never over the user\'s files, the input or a directory', async () => {
    const input = path.join(directory, 'in-out.json');
    await writeFile(input, JSON.stringify({ input_ids: [[1, 2, 3]] }));
    const forward = (out: string, ...extra: string[]) => run(['forward', '--model', GPT2, '--input', input, '--out', out, ...extra]);
    const notes = path.join(directory, 'notes.txt');
    await writeFile(notes, 'my notes\n');
    const otherJson = path.join(directory, 'other.json');
    await writeFile(otherJson, JSON.stringify({ logits: [[1]], mine: true }));
    const refusals: [string[], string][] = [
      [[notes], `--out ${notes} exists; pass --overwrite to replace it (only a logits file lora forward wrote) or choose another path.`],
      [[notes, '--overwrite'], `--out ${notes} is not a logits file lora forward wrote; it is left untouched, --overwrite included. Choose another path.`],
      [[otherJson, '--overwrite'], `--out ${otherJson} is not a logits file lora forward wrote`],
      [[input, '--overwrite'], `--out ${input} is the --input file; choose another path for the logits.`],
      [[directory], `--out ${directory} is a directory; give a file path such as ${path.join(directory, 'logits.json')}.`],
    ];
    for (const [argv, message] of refusals) {
      const result = await forward(argv[0]!, ...argv.slice(1));
      expect(result.code, argv.join(' ')).toBe(2);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toContain(`lora: ${message}`);
    }
    expect(await readFile(notes, 'utf8')).toBe('my notes\n');
    expect(JSON.parse(await readFile(otherJson, 'utf8'))).toEqual({ logits: [[1]], mine: true });
    expect(JSON.parse(await readFile(input, 'utf8'))).toEqual({ input_ids: [[1, 2, 3]] });
    // Its own logits file: refused without --overwrite, replaced with it.
    const out = path.join(directory, 'logits.json');
    expect((await forward(out)).code).toBe(0);
    const first = await readFile(out, 'utf8');
    expect((await forward(out)).code).toBe(2);
    expect((await forward(out, '--overwrite')).code).toBe(0);
    expect(await readFile(out, 'utf8')).toBe(first);
  });

  it('refuses forward inputs the model cannot take, naming the file, the entry and the limit (exit 2)', async () => {
    // Limits read from the GPT-2 fixture's config.
    const config = JSON.parse(await readFile(path.join(GPT2, 'config.json'), 'utf8')) as { vocab_size: number; n_positions: number };
    const cases: [object, string][] = [
      [{ input_ids: [[1, 2, config.vocab_size]] }, `input_ids[0][2] must be an integer from 0 to ${config.vocab_size - 1} (the model's vocab_size is ${config.vocab_size}), got ${config.vocab_size}.`],
      [{ input_ids: [[1, 2], [3, -2]] }, `input_ids[1][1] must be an integer from 0 to ${config.vocab_size - 1} (the model's vocab_size is ${config.vocab_size}), got -2.`],
      [{ input_ids: [Array.from({ length: config.n_positions + 1 }, () => 1)] }, `input_ids rows are ${config.n_positions + 1} tokens, more than the model's ${config.n_positions} positions (n_positions in its config.json); shorten them.`],
      [{ input_ids: [[1, 2], [3]] }, 'input_ids must have rows of one length (pad them and pass attention_mask), but row 1 has 1 ids and row 0 has 2.'],
      [{ input_ids: [[1, 2]], attention_mask: [[1]] }, 'attention_mask must be a [1, 2] array, the shape of input_ids.'],
    ];
    for (const [body, message] of cases) {
      const input = path.join(directory, `in-bad-${Math.random()}.json`);
      await writeFile(input, JSON.stringify(body));
      const out = path.join(directory, `out-bad-${Math.random()}.json`);
      const result = await run(['forward', '--model', GPT2, '--input', input, '--out', out]);
      expect(result.code, message).toBe(2);
      expect(result.stderr).toBe(`lora: ${input}: ${message}\n`);
      await expect(readFile(out)).rejects.toThrow(/ENOENT/u);
    }
  });

  it('says when a finished run made the model worse: a signed change and a warning, the adapter still saved (exit 0)', async () => {
    // The bundled base at a learning rate far too high for it: finite, but much worse.
    const out = path.join(directory, 'worse');
    const result = await run(['train', '--context', '32', '--batch-size', '2', '--steps', '3', '--learning-rate', '5', '--out', out]);
    expect(result.code).toBe(0);
    const [, change] = /Validation perplexity [\d.]+ → [\d.]+ \(\+([\d.]+)%\)/u.exec(result.stdout) ?? [];
    expect(Number(change)).toBeGreaterThan(0);
    expect(result.stderr).toBe(`lora: warning: validation perplexity rose ${change}% over the run; the adapter is saved, but try a lower --learning-rate or more data.\n`);
    await expect(readFile(path.join(out, 'adapter', 'adapter_model.safetensors'))).resolves.toBeDefined();
  });

  it('sees @lora/core\'s built errors under their own names (the CLI tells a TrainingError by name)', () => {
    // esbuild renames a class that refers to itself (`_SafetensorsError`); the errors' `name` must not follow.
    const errors = [new SafetensorsError('TRUNCATED', 'x'), new TrainingError('x'), new CheckpointError('x'), new ConfigError({ field: 'f', received: 1, expected: 'e' })];
    expect(errors.map((error) => error.name)).toEqual(['SafetensorsError', 'TrainingError', 'CheckpointError', 'ConfigError']);
  });
});
