import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUNDLED_BASE_PACKAGE } from '@lora/models';
import { GPT2, run } from './helpers.js';

const HYPER_ANSWERS = ['--memory', 'ample', '--multi-task', '--compute', 'substantial'];

describe('lora train / export / forward with HyperLoRA', () => {
  let directory: string;
  beforeAll(async () => {
    directory = await mkdtemp(path.join(tmpdir(), 'selector-hyper-'));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it('trains on a conditioned JSONL, names the condition of each loss, exports a condition to a plain LoRA with the same logits, and refuses to merge the HyperLoRA itself', async () => {
    const lines: string[] = [];
    const texts = { a: 'the quick brown fox jumps over the lazy dog. ', b: 'we the people of the united states, in order to form. ' };
    for (let i = 0; i < 20; i++) for (const task of ['a', 'b'] as const) lines.push(JSON.stringify({ text: texts[task].repeat(3), condition: { task } }));
    const data = path.join(directory, 'tasks.jsonl');
    await writeFile(data, `${lines.join('\n')}\n`);
    const out = path.join(directory, 'hyper-run');
    const trained = await run(['train', '--model', GPT2, ...HYPER_ANSWERS, '--data', data, '--steps', '3', '--batch-size', '4', '--context', '16', '--out', out]);
    expect(trained.stderr).toBe('');
    expect(trained.code).toBe(0);
    expect(trained.stdout).toContain('└─▶ HyperLoRA');
    expect(trained.stdout).toMatch(/condition task=a: base [\d.]+ → HyperLoRA [\d.]+/u);
    expect(trained.stdout).toMatch(/condition task=b: base [\d.]+ → HyperLoRA [\d.]+/u);
    const config = JSON.parse(await readFile(path.join(out, 'adapter_config.json'), 'utf8')) as { peft_type: string; condition: unknown; base_model_name_or_path: unknown };
    expect(config.peft_type).toBe('HYPERLORA');
    // The base it was trained on, recorded as an ordinary run records it (it was null before).
    expect(config.base_model_name_or_path).toBe(path.resolve(GPT2));
    const inspected = await run(['inspect', out]);
    expect(inspected.stdout).toMatch(/\nTargets: no per-module factors in the weights; target_modules \[.*c_attn.*\]\n/u);
    expect(config.condition).toEqual({ kind: 'discrete', factors: [{ name: 'task', values: ['a', 'b'], dim: 16 }] });

    const exported = path.join(directory, 'task-b-lora');
    const exportRun = await run(['export', '--model', GPT2, '--adapter', out, '--condition', 'task=b', '--out', exported]);
    expect(exportRun.stderr).toBe('');
    expect(exportRun.code).toBe(0);
    expect(exportRun.stdout).toBe(`wrote the plain LoRA for task=b to ${exported}\n`);
    // No condition at all: said, with the factor that takes its learned null embedding.
    const unconditioned = await run(['export', '--model', GPT2, '--adapter', out, '--condition', '', '--out', path.join(directory, 'null-lora')]);
    expect(unconditioned.code).toBe(0);
    expect(unconditioned.stdout).toBe(`wrote the plain LoRA for no condition (task at the learned null embedding) to ${path.join(directory, 'null-lora')}\n`);
    const generated = await run(['generate', '--model', GPT2, '--adapter', out, '--prompt', 'the', '--max-new-tokens', '2', '--greedy']);
    expect(generated.code).toBe(0);
    expect(generated.stderr).toBe('lora: note: the HyperLoRA runs with no condition (task at the learned null embedding); pass --condition factor=value,… for every factor to choose one.\n');
    const exportedConfig = JSON.parse(await readFile(path.join(exported, 'adapter_config.json'), 'utf8')) as { peft_type: string; base_model_name_or_path: unknown };
    expect(exportedConfig.peft_type).toBe('LORA');
    expect(exportedConfig.base_model_name_or_path).toBe(path.resolve(GPT2));

    const input = path.join(directory, 'in.json');
    await writeFile(input, JSON.stringify({ input_ids: [[10, 20, 30, 40], [50, 60, 70, 80]] }));
    const viaHyper = path.join(directory, 'hyper-logits.json');
    const viaLora = path.join(directory, 'lora-logits.json');
    const conditioned = await run(['forward', '--model', GPT2, '--adapter', out, '--condition', 'task=b', '--input', input, '--out', viaHyper]);
    expect(conditioned.code).toBe(0);
    expect(conditioned.stderr).toBe('');
    expect((await run(['forward', '--model', GPT2, '--adapter', exported, '--input', input, '--out', viaLora])).code).toBe(0);
    const flat = async (file: string) => (JSON.parse(await readFile(file, 'utf8')) as { logits: number[][][] }).logits.flat(2);
    const [a, b] = [await flat(viaHyper), await flat(viaLora)];
    expect(a.length).toBe(b.length);
    expect(Math.max(...a.map((value, i) => Math.abs(value - b[i]!)))).toBeLessThan(1e-5);

    // A HyperLoRA has no single ΔW: merge refuses in one line (exit 2), names the fix, and writes nothing.
    const mergedDirectory = path.join(directory, 'merged');
    const merge = await run(['merge', '--model', GPT2, '--adapter', out, '--out', mergedDirectory]);
    expect(merge.code).toBe(2);
    expect(merge.stderr.trim().split('\n')).toHaveLength(1);
    expect(merge.stderr).toContain(`${out} is a HyperLoRA adapter`);
    expect(merge.stderr).toContain(`lora export --model ${GPT2} --adapter ${out} --condition task=a --out <lora dir>, then lora merge --model ${GPT2} --adapter <lora dir> --out <dir>`);
    await expect(readFile(path.join(mergedDirectory, 'config.json'))).rejects.toThrow(/ENOENT/u);

    const unknown = await run(['forward', '--model', GPT2, '--adapter', out, '--condition', 'task=z', '--input', input, '--out', viaHyper, '--overwrite']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/--condition: .*condition\.task must be one of "a", "b", got "z"/u);
    expect(unknown.stderr.trim().split('\n')).toHaveLength(1);

    // --out is checked before any training: an earlier run's directory without --overwrite, and a user's, are refused at once.
    const train = ['train', '--model', GPT2, ...HYPER_ANSWERS, '--data', data, '--steps', '3', '--batch-size', '4', '--context', '16'];
    const again = await run([...train, '--out', out]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/exists and is not empty; pass --overwrite/u);
    expect(again.stdout).not.toContain('validation loss');
    const users = path.join(directory, 'users-folder');
    await mkdir(users);
    await writeFile(path.join(users, 'thesis.tex'), 'mine\n');
    const refused = await run([...train, '--out', users, '--overwrite']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/holds files lora did not write \(thesis\.tex\)/u);
    expect(refused.stdout).not.toContain('validation loss');
    expect(await readdir(users)).toEqual(['thesis.tex']);

    // --json: exactly one JSON document on stdout, everything for people on stderr.
    const json = await run([...train, '--out', out, '--overwrite', '--json']);
    expect(json.code).toBe(0);
    const document = JSON.parse(json.stdout) as { variant: string; out: string; adapter: string; report: { conditions: { condition: string }[] } };
    expect(document).toMatchObject({ variant: 'hyperlora', out, adapter: out });
    expect(document.report.conditions.map((row) => row.condition)).toEqual(['task=a', 'task=b']);
    expect(json.stderr).toMatch(/condition task=a: base [\d.]+ → HyperLoRA [\d.]+/u);
  });

  it('runs to the end on the default corpus (State of the Union, party × era), reporting the held-out combination against the base and a shared LoRA', async () => {
    const out = path.join(directory, 'sotu-run');
    const result = await run(['train', ...HYPER_ANSWERS, '--steps', '2', '--batch-size', '4', '--context', '32', '--out', out]);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/condition era=modern,party=Republican \(held out of training\): base [\d.]+ → HyperLoRA [\d.]+ \(shared LoRA [\d.]+\)/u);
    const report = JSON.parse(await readFile(path.join(out, 'hyper-report.json'), 'utf8')) as { conditions: { condition: string; heldOut: boolean; sharedLora: number }[] };
    expect(report.conditions.map((row) => row.condition).sort()).toEqual(['era=early,party=Democratic', 'era=early,party=Republican', 'era=modern,party=Democratic', 'era=modern,party=Republican']);
    expect(report.conditions.filter((row) => row.heldOut).map((row) => row.condition)).toEqual(['era=modern,party=Republican']);
    expect(report.conditions.every((row) => Number.isFinite(row.sharedLora))).toBe(true);
    // Trained on the bundled base: its package names it, as in an ordinary run.
    const config = JSON.parse(await readFile(path.join(out, 'adapter_config.json'), 'utf8')) as { base_model_name_or_path: unknown };
    expect(config.base_model_name_or_path).toBe(BUNDLED_BASE_PACKAGE);
  });

  it('rejects a JSONL line without a condition, naming the file and line', async () => {
    const data = path.join(directory, 'plain.jsonl');
    await writeFile(data, '{"text": "a", "condition": {"task": "a"}}\n{"text": "b"}\n');
    const result = await run(['train', '--model', GPT2, ...HYPER_ANSWERS, '--data', data, '--steps', '2', '--context', '16', '--out', path.join(directory, 'plain-run')]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/plain\.jsonl:2: "condition" must be an object of non-empty strings/u);
  });
});
