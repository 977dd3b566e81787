import { mkdtemp, readdir, readFile, rm, writeFile, mkdir, cp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { maxRelativeError } from '@lora/core/testing';
import { BERT, FIXTURES, GPT2, run } from './helpers.js';

interface Reference {
  inputs: Record<string, number[][]>;
  logits: unknown;
  merged_logits?: unknown;
}

const flat = (value: unknown): number[] => (Array.isArray(value) ? value.flatMap(flat) : [value as number]);

/** max|a − e| / max|e|, the acceptance measure. */
function relativeError(actual: unknown, expected: unknown): number {
  return maxRelativeError(flat(actual), flat(expected));
}

async function reference(relative: string): Promise<Reference> {
  return JSON.parse(await readFile(path.join(FIXTURES, relative, 'reference.json'), 'utf8')) as Reference;
}

describe('lora forward / merge / inspect / generate', () => {
  let directory: string;
  beforeAll(async () => {
    directory = await mkdtemp(path.join(tmpdir(), 'selector-commands-'));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  async function forward(model: string, input: Record<string, number[][]>, adapters: string[] = [], extra: string[] = []): Promise<unknown> {
    const inputFile = path.join(directory, `in-${Math.random()}.json`);
    const outFile = path.join(directory, `out-${Math.random()}.json`);
    await writeFile(inputFile, JSON.stringify(input));
    const result = await run(['forward', '--model', model, ...adapters.flatMap((a) => ['--adapter', a]), ...extra, '--input', inputFile, '--out', outFile]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    return (JSON.parse(await readFile(outFile, 'utf8')) as { logits: unknown }).logits;
  }

  it.each([
    ['models/gpt2', GPT2, []],
    ['models/bert', BERT, []],
    ['adapters/gpt2_lora', GPT2, ['adapters/gpt2_lora']],
    ['adapters/bert_lora_cls', BERT, ['adapters/bert_lora_cls']],
  ])('reproduces the reference logits of %s within 1e-4', async (fixture, model, adapters) => {
    const ref = await reference(fixture);
    const logits = await forward(model, ref.inputs, adapters.map((a) => path.join(FIXTURES, a)));
    expect(relativeError(logits, ref.logits)).toBeLessThan(1e-4);
  });

  it('merges an adapter into a plain checkpoint with the same logits as model + adapter', async () => {
    const out = path.join(directory, 'merged-gpt2');
    const result = await run(['merge', '--model', GPT2, '--adapter', path.join(FIXTURES, 'adapters/gpt2_lora'), '--out', out]);
    expect(result.code).toBe(0);
    // The base's generation (and tokenizer) files come along, byte for byte.
    expect((await readdir(out)).sort()).toEqual(['.lora-output.json', 'config.json', 'generation_config.json', 'model.safetensors']);
    expect((await readFile(path.join(out, 'generation_config.json'))).equals(await readFile(path.join(GPT2, 'generation_config.json')))).toBe(true);
    const ref = await reference('adapters/gpt2_lora');
    const merged = await forward(out, ref.inputs);
    const withAdapter = await forward(GPT2, ref.inputs, [path.join(FIXTURES, 'adapters/gpt2_lora')]);
    expect(relativeError(merged, withAdapter)).toBeLessThan(1e-5);
    expect(relativeError(merged, ref.merged_logits)).toBeLessThan(1e-4);
    const again = await run(['merge', '--model', GPT2, '--adapter', path.join(FIXTURES, 'adapters/gpt2_lora'), '--out', out]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/exists and is not empty; pass --overwrite/u);
  });

  it('writes a 4-bit checkpoint that gives the same logits as quantizing on the fly', async () => {
    const out = path.join(directory, 'gpt2-nf4');
    const quantized = await run(['quantize', '--model', GPT2, '--out', out, '--double-quant']);
    expect(quantized.code).toBe(0);
    const config = JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8')) as { quantization_config: Record<string, unknown> };
    expect(config.quantization_config).toMatchObject({ load_in_4bit: true, bnb_4bit_quant_type: 'nf4', bnb_4bit_use_double_quant: true });
    const ref = await reference('models/gpt2');
    const fromCheckpoint = await forward(out, ref.inputs);
    const onTheFly = await forward(GPT2, ref.inputs, [], ['--quantize', 'nf4']);
    expect(relativeError(fromCheckpoint, onTheFly)).toBe(0);
    // 4-bit weights change the logits, but not beyond NF4's rounding.
    const error = relativeError(fromCheckpoint, ref.logits);
    expect(error).toBeGreaterThan(1e-4);
    expect(error).toBeLessThan(0.2);
  });

  it('merges into a 4-bit checkpoint\'s dequantized weights and writes a whole float model that loads (it wrote one without its linear weights)', async () => {
    const quantized = path.join(directory, 'gpt2-nf4-for-merge');
    expect((await run(['quantize', '--model', GPT2, '--out', quantized])).code).toBe(0);
    const adapter = path.join(FIXTURES, 'adapters/gpt2_lora');
    const out = path.join(directory, 'merged-from-nf4');
    const result = await run(['merge', '--model', quantized, '--adapter', adapter, '--out', out]);
    expect(result.code).toBe(0);
    expect(result.stderr).toBe(
      `lora: note: ${quantized} is a 4-bit checkpoint: the adapter was merged into its dequantized weights and the merged model is written in float32 (lora quantize makes it 4-bit again).\n`,
    );
    const config = JSON.parse(await readFile(path.join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(config['quantization_config']).toBeUndefined();
    const ref = await reference('adapters/gpt2_lora');
    // The 4-bit base with the adapter on top, computed unmerged: the merge of its dequantized weights is exact up to float32 rounding.
    const merged = await forward(out, ref.inputs);
    const unmerged = await forward(quantized, ref.inputs, [adapter]);
    expect(relativeError(merged, unmerged)).toBeLessThan(1e-5);
  });

  it('refuses to quantize a checkpoint that is already 4-bit (exit 2, one line, naming it and its settings) before writing anything', async () => {
    const once = path.join(directory, 'gpt2-fp4');
    expect((await run(['quantize', '--model', GPT2, '--out', once, '--type', 'fp4', '--block-size', '128', '--double-quant'])).code).toBe(0);
    const files = async () => new Map(await Promise.all((await readdir(once)).map(async (name) => [name, await readFile(path.join(once, name))] as const)));
    const before = await files();
    // The block size is not in config.json: it comes from the weights' quant state.
    const message = `lora: --model ${once} is already quantized (4-bit fp4, block size 128, double-quantized scales: quantization_config in its config.json); lora quantize needs a float checkpoint, so pass the model it was made from.\n`;
    const again = path.join(directory, 'gpt2-fp4-again');
    const refused = await run(['quantize', '--model', once, '--out', again]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toBe(message);
    expect((await readdir(directory)).filter((name) => name.startsWith('gpt2-fp4-again'))).toEqual([]);
    // Over itself, with --overwrite: refused the same way, every file as it was.
    const overItself = await run(['quantize', '--model', once, '--out', once, '--overwrite', '--type', 'nf4']);
    expect(overItself.code).toBe(2);
    expect(overItself.stderr).toBe(message);
    const after = await files();
    expect([...after.keys()].sort()).toEqual([...before.keys()].sort());
    for (const [name, bytes] of before) expect(after.get(name)?.equals(bytes), name).toBe(true);
    expect((await readdir(directory)).filter((name) => name.startsWith('gpt2-fp4.'))).toEqual([]);
  });

  it('inspects adapters and models', async () => {
    const adapter = await run(['inspect', path.join(FIXTURES, 'adapters/gpt2_lora'), '--json']);
    const parsed = JSON.parse(adapter.stdout) as { kind: string; type: string; targets: { rank: number }[]; parameters: number };
    expect(parsed).toMatchObject({ kind: 'adapter', type: 'LORA' });
    expect(parsed.targets).toHaveLength(6);
    expect(parsed.targets.every((t) => t.rank === 4)).toBe(true);
    expect(parsed.parameters).toBe(2 * (4 * 64 + 192 * 4) + 2 * (4 * 64 + 64 * 4) + 2 * (4 * 256 + 64 * 4));
    const model = await run(['inspect', GPT2]);
    expect(model.stdout).toMatch(/^Model: GPT2LMHeadModel\nParameters: /u);
    expect(model.stdout).not.toMatch(/Quantization/u);
    // A 4-bit checkpoint says so, and that its counts are of stored elements.
    const quantized = path.join(directory, 'inspect-nf4');
    expect((await run(['quantize', '--model', GPT2, '--out', quantized, '--double-quant'])).code).toBe(0);
    const inspected = await run(['inspect', quantized]);
    expect(inspected.stdout).toContain('Quantization: 4-bit bitsandbytes (nf4, double-quantized scales); parameters above count stored elements (packed codes, scales)\n');
    const missing = await run(['inspect', path.join(directory, 'nope')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe(`lora: ${path.join(directory, 'nope')} does not exist; give a model or adapter directory.\n`);
  });

  it('generates text from the fixture GPT-2', async () => {
    const result = await run(['generate', '--model', GPT2, '--prompt', 'Call me', '--max-new-tokens', '5', '--greedy']);
    expect(result.code).toBe(0);
    expect(result.stdout.startsWith('Call me')).toBe(true);
  });

  it('generates as many tokens as the model\'s positions leave after a long prompt, and refuses what cannot fit (exit 2)', async () => {
    // The bundled base has 128 positions and takes bytes as tokens: a 100-byte prompt leaves 28 of the default 80.
    const prompt = 'x'.repeat(100);
    const capped = await run(['generate', '--prompt', prompt, '--greedy']);
    expect(capped.code).toBe(0);
    expect(capped.stderr).toBe("lora: generating 28 tokens: the prompt's 100 fill the rest of the model's 128 positions.\n");
    expect(capped.stdout.startsWith(prompt)).toBe(true);
    const refusals: [string[], string][] = [
      [['--prompt', prompt, '--max-new-tokens', '29'], '--max-new-tokens 29 after a 100-token prompt exceeds the model\'s 128 positions; pass --max-new-tokens 28 or less, or shorten the prompt.'],
      [['--prompt', 'y'.repeat(128)], '--prompt is 128 tokens, which fill the model\'s 128 positions; shorten it to at most 127.'],
      [['--prompt', ''], '--prompt is empty; give the text to continue.'],
    ];
    for (const [flags, message] of refusals) {
      const result = await run(['generate', ...flags, '--greedy']);
      expect(result.code).toBe(2);
      expect(result.stderr).toBe(`lora: ${message}\n`);
    }
  });

  it('fails with one line and exit 2 on bad input, leaving no partial output', async () => {
    const missingModel = await run(['forward', '--model', path.join(directory, 'nope'), '--input', 'x.json', '--out', 'y.json']);
    expect(missingModel.code).toBe(2);
    const corrupt = path.join(directory, 'corrupt-adapter');
    await mkdir(corrupt);
    await cp(path.join(FIXTURES, 'adapters/gpt2_lora/adapter_config.json'), path.join(corrupt, 'adapter_config.json'));
    const bytes = await readFile(path.join(FIXTURES, 'adapters/gpt2_lora/adapter_model.safetensors'));
    await writeFile(path.join(corrupt, 'adapter_model.safetensors'), bytes.subarray(0, 100));
    const out = path.join(directory, 'corrupt-merge');
    const result = await run(['merge', '--model', GPT2, '--adapter', corrupt, '--out', out]);
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(/Adapter .*corrupt-adapter does not load: Malformed safetensors/u);
    expect((await readdir(directory)).filter((name) => name.startsWith('corrupt-merge'))).toEqual([]);
  });
});
