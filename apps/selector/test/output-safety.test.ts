import { cp, mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countNonFinite, readSafetensorsFile, writeFileAtomic } from '@lora/core';
import { setFaultInjector } from '@lora/core/internal';
import { runUntilKilled } from '@lora/core/testing';
import { cleanUpStale, OUTPUT_MARKER, outputState, readMarker, writeDirectoryAtomically } from '../src/output-dir.js';
import { FIXTURES, GPT2, run } from './helpers.js';

/** Every file under `directory` (relative path → bytes), the marker left out. */
async function snapshot(directory: string): Promise<Map<string, Buffer>> {
  const files = new Map<string, Buffer>();
  const walk = async (dir: string) => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) await walk(full);
      else if (entry.name !== OUTPUT_MARKER) files.set(path.relative(directory, full), await readFile(full));
    }
  };
  await walk(directory);
  return files;
}

function sameFiles(actual: Map<string, Buffer>, expected: Map<string, Buffer>): boolean {
  return actual.size === expected.size && [...expected].every(([name, bytes]) => actual.get(name)?.equals(bytes) === true);
}

describe('output directories', () => {
  let directory: string;
  beforeAll(async () => {
    directory = await mkdtemp(path.join(tmpdir(), 'selector-safety-'));
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it('refuses a directory with files lora did not write, --overwrite included, and leaves every file', async () => {
    const project = path.join(directory, 'project');
    await mkdir(path.join(project, 'src'), { recursive: true });
    await writeFile(path.join(project, 'src', 'code.ts'), 'export const x = 1;\n');
    await writeFile(path.join(project, 'notes.md'), '# notes\n');
    const before = await snapshot(project);
    const data = path.join(directory, 'data.jsonl');
    await writeFile(data, `${Array.from({ length: 30 }, (_, i) => JSON.stringify({ text: `Line ${i} of the data, long enough to fill a window or two.` })).join('\n')}\n`);
    for (const argv of [
      ['train', '--model', GPT2, '--data', data, '--steps', '1', '--context', '16', '--batch-size', '2', '--out', project, '--overwrite'],
      ['merge', '--model', GPT2, '--adapter', path.join(FIXTURES, 'adapters/gpt2_lora'), '--out', project, '--overwrite'],
    ]) {
      const result = await run(argv);
      expect(result.code).toBe(2);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toMatch(/holds files lora did not write \(.*notes\.md.*\); it is left untouched, --overwrite included/u);
      expect(sameFiles(await snapshot(project), before)).toBe(true);
      expect((await readdir(directory)).filter((name) => name.startsWith('project.'))).toEqual([]);
    }
  });

  it('refuses to replace its own earlier output once the user has added a file to it (default directory and --overwrite), and lists its files in the marker', async () => {
    const cwd = process.cwd();
    const project = path.join(directory, 'added');
    await mkdir(project);
    process.chdir(project);
    try {
      const data = path.join(directory, 'added-data.jsonl');
      await writeFile(data, `${Array.from({ length: 30 }, (_, i) => JSON.stringify({ text: `Line ${i} of the data, long enough to fill a window or two.` })).join('\n')}\n`);
      const train = ['train', '--model', GPT2, '--data', data, '--steps', '1', '--context', '16', '--batch-size', '2'];
      expect((await run(train)).code).toBe(0);
      const out = path.join(project, 'lora-runs', 'lora');
      expect([...((await readMarker(out))?.files ?? [])].sort()).toEqual(['adapter', 'adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'report.json', 'report.md', 'run.json']);
      // Added at the top and inside the adapter: each alone makes the directory the user's too.
      for (const added of ['my-analysis.txt', path.join('adapter', 'my-notes.txt')]) {
        await writeFile(path.join(out, added), 'mine\n');
        const before = await snapshot(out);
        for (const argv of [train, [...train, '--out', out, '--overwrite']]) {
          const result = await run(argv);
          expect(result.code).toBe(2);
          expect(result.stderr.trim().split('\n')).toHaveLength(1);
          expect(result.stderr).toContain(`holds files lora did not write (${added.split(path.sep).join('/')}); it is left untouched, --overwrite included`);
          expect(sameFiles(await snapshot(out), before)).toBe(true);
        }
        await rm(path.join(out, added));
      }
      // Without the added files it is lora's again.
      expect((await run(train)).code).toBe(0);
      // A marker without the list (an earlier lora) cannot tell lora's files from the user's.
      const marker = JSON.parse(await readFile(path.join(out, OUTPUT_MARKER), 'utf8')) as Record<string, unknown>;
      delete marker['files'];
      await writeFile(path.join(out, OUTPUT_MARKER), JSON.stringify(marker));
      const before = await snapshot(out);
      const legacy = await run([...train, '--out', out, '--overwrite']);
      expect(legacy.code).toBe(2);
      expect(legacy.stderr).toMatch(/was written by an earlier version of lora that did not record its files, so it cannot tell them from yours; it is left untouched/u);
      expect(sameFiles(await snapshot(out), before)).toBe(true);
    } finally {
      process.chdir(cwd);
    }
  });

  it('refuses to replace its own earlier output once the user has changed a file lora wrote (default directory and --overwrite), leaving every file as it is', async () => {
    const cwd = process.cwd();
    const project = path.join(directory, 'modified');
    await mkdir(project);
    process.chdir(project);
    try {
      const data = path.join(directory, 'modified-data.jsonl');
      await writeFile(data, `${Array.from({ length: 30 }, (_, i) => JSON.stringify({ text: `Line ${i} of the data, long enough to fill a window or two.` })).join('\n')}\n`);
      const train = ['train', '--model', GPT2, '--data', data, '--steps', '1', '--context', '16', '--batch-size', '2'];
      expect((await run(train)).code).toBe(0);
      const out = path.join(project, 'lora-runs', 'lora');
      // Every file's size and mtime, recorded when the output was complete (the run wrote and removed a checkpoint before).
      expect(Object.keys((await readMarker(out))?.fileStats ?? {}).sort()).toEqual(['adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'report.json', 'report.md', 'run.json']);
      // Changed at the top (notes appended) and inside the adapter (same size, other bytes): each alone makes the directory the user's.
      const edits: [string, (original: Buffer) => Buffer][] = [
        ['report.md', (original) => Buffer.concat([original, Buffer.from('\nMy notes on this run.\n')])],
        [path.join('adapter', 'adapter_config.json'), (original) => Buffer.from(original).reverse()],
      ];
      for (const [file, edit] of edits) {
        await writeFile(path.join(out, file), edit(await readFile(path.join(out, file))));
        const before = await snapshot(out);
        for (const argv of [train, [...train, '--out', out, '--overwrite']]) {
          const result = await run(argv);
          expect(result.code, `${file}: ${argv.join(' ')}`).toBe(2);
          expect(result.stderr.trim().split('\n')).toHaveLength(1);
          expect(result.stderr).toBe(
            `lora: --out ${out} holds files lora wrote that were changed since (${file.split(path.sep).join('/')}); it is left untouched, --overwrite included. Move them out, or choose another --out.\n`,
          );
          expect(result.stdout).not.toContain('validation');
          expect(sameFiles(await snapshot(out), before)).toBe(true);
          expect((await readdir(path.join(project, 'lora-runs'))).sort()).toEqual(['lora']);
        }
        // The fix the message names: with the changed file moved out, the directory is lora's again.
        await rm(path.join(out, file));
        expect((await run(train)).code).toBe(0);
      }
      // A marker of the version before sizes and mtimes (its file list, no fileStats) is read by
      // name only, as that version did, so its outputs are not locked out of re-runs.
      const marker = JSON.parse(await readFile(path.join(out, OUTPUT_MARKER), 'utf8')) as Record<string, unknown>;
      delete marker['fileStats'];
      await writeFile(path.join(out, OUTPUT_MARKER), JSON.stringify(marker));
      await writeFile(path.join(out, 'report.md'), 'edited\n');
      expect((await outputState(out)).kind).toBe('ours');
      expect((await run(train)).code).toBe(0);
    } finally {
      process.chdir(cwd);
    }
  });

  it('tells a changed file by its size alone and by its mtime alone', async () => {
    const target = path.join(directory, 'stats');
    // Whole seconds: an mtime that can be set back exactly.
    const fixed = 1_000_000;
    await writeDirectoryAtomically(
      target,
      async (staging) => {
        for (const name of ['a.txt', path.join('sub', 'b.txt')]) {
          await writeFileAtomic(path.join(staging, name), 'lora\n');
          await utimes(path.join(staging, name), fixed, fixed);
        }
      },
      { kind: 'merge' },
    );
    expect((await outputState(target)).kind).toBe('ours');
    const a = path.join(target, 'a.txt');
    // Longer, with its mtime set back: only the size tells.
    await writeFile(a, 'lora, and mine\n');
    await utimes(a, fixed, fixed);
    expect(await outputState(target)).toEqual({ kind: 'foreign', entries: [], modified: ['a.txt'] });
    await writeFile(a, 'lora\n');
    await utimes(a, fixed, fixed);
    expect((await outputState(target)).kind).toBe('ours');
    // The same size, other bytes, written now: only the mtime tells.
    await writeFile(path.join(target, 'sub', 'b.txt'), 'mine\n');
    expect(await outputState(target)).toEqual({ kind: 'foreign', entries: [], modified: ['sub/b.txt'] });
    // Added and changed together: both named.
    await writeFile(path.join(target, 'notes.txt'), 'mine\n');
    await expect(writeDirectoryAtomically(target, async () => undefined, { kind: 'merge', overwrite: true })).rejects.toThrow(
      `--out ${target} holds files lora did not write (notes.txt) and files lora wrote that were changed since (sub/b.txt); it is left untouched, --overwrite included. Move them out, or choose another --out.`,
    );
  });

  it('keeps the previous output complete when moving the new one in fails (EXDEV)', async () => {
    const out = path.join(directory, 'merged');
    expect((await run(['merge', '--model', GPT2, '--adapter', path.join(FIXTURES, 'adapters/gpt2_lora'), '--out', out])).code).toBe(0);
    const before = await snapshot(out);
    let failed = false;
    setFaultInjector((point) => {
      if (point.operation === 'rename' && point.path === out && !failed) {
        failed = true;
        throw Object.assign(new Error('EXDEV: cross-device link not permitted'), { code: 'EXDEV' });
      }
    });
    let result;
    try {
      result = await run(['quantize', '--model', GPT2, '--out', out, '--overwrite']);
    } finally {
      setFaultInjector(null);
    }
    expect(failed).toBe(true);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/Could not move the new output into .*merged \(EXDEV\); the previous contents are unchanged/u);
    expect(sameFiles(await snapshot(out), before)).toBe(true);
    expect((await readMarker(out))?.kind).toBe('merge');
    expect((await readdir(directory)).filter((name) => name.startsWith('merged.'))).toEqual([]);
  });

  it('leaves the old or the new output complete at every kill point of a replacement, and the next run tidies up', async () => {
    const target = path.join(directory, 'replaced');
    const write = (version: string) => async (staging: string) => {
      await writeFileAtomic(path.join(staging, 'a.txt'), `a ${version}\n`);
      await writeFileAtomic(path.join(staging, 'sub', 'b.txt'), `b ${version}\n`);
    };
    await writeDirectoryAtomically(target, write('old'), { kind: 'merge' });
    const old = await snapshot(target);
    const scratch = path.join(directory, 'reference-new');
    await writeDirectoryAtomically(scratch, write('new'), { kind: 'merge' });
    const fresh = await snapshot(scratch);
    const counted = await runUntilKilled(() => writeDirectoryAtomically(target, write('old'), { kind: 'merge', overwrite: true }), () => false);
    expect(counted.points.length).toBeGreaterThan(20);
    for (let kill = 0; kill < counted.points.length; kill++) {
      await rm(target, { recursive: true, force: true });
      await writeDirectoryAtomically(target, write('old'), { kind: 'merge' });
      const killed = await runUntilKilled(() => writeDirectoryAtomically(target, write('new'), { kind: 'merge', overwrite: true }), (_, index) => index === kill);
      expect(killed.killed).toBe(true);
      // Right after the kill: the target is the old or the new output, complete; or (killed between
      // the two renames) it is missing and both complete copies sit beside it.
      const siblings = (await readdir(directory)).filter((name) => name.startsWith('replaced.'));
      const candidates = [target, ...siblings.map((name) => path.join(directory, name))];
      const complete = [];
      for (const candidate of candidates) {
        const marker = await readMarker(candidate);
        if (marker?.status !== 'complete') continue;
        const files = await snapshot(candidate);
        if (sameFiles(files, old) || sameFiles(files, fresh)) complete.push(candidate);
      }
      expect(complete.length, `kill ${kill} (${killed.points.at(-1)!.operation} ${killed.points.at(-1)!.path})`).toBeGreaterThan(0);
      const atTarget = await readMarker(target);
      if (atTarget) expect(complete).toContain(target);
      // The next run finishes or rolls back the replacement and removes what the killed one left.
      await cleanUpStale(target);
      const files = await snapshot(target);
      expect(sameFiles(files, old) || sameFiles(files, fresh), `kill ${kill}`).toBe(true);
      expect((await readdir(directory)).filter((name) => name.startsWith('replaced.'))).toEqual([]);
    }
  });
});

describe('lora train: divergence, interruption, resume', () => {
  let directory: string;
  let data: string;
  const common = (out: string) => ['train', '--model', GPT2, '--data', data, '--steps', '6', '--context', '32', '--batch-size', '4', '--checkpoint-every', '2', '--out', out];
  beforeAll(async () => {
    directory = await mkdtemp(path.join(tmpdir(), 'selector-resume-'));
    data = path.join(directory, 'data.jsonl');
    const lines = Array.from({ length: 60 }, (_, i) => JSON.stringify({ text: `Record ${i}: the quick brown fox jumps over the lazy dog, again and again, ${i * 7} times.` }));
    await writeFile(data, `${lines.join('\n')}\n`);
  });
  afterAll(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  it('refuses bad settings found only with the model or its layers (exit 2) and leaves nothing beside --out', async () => {
    const unknownTargets = path.join(directory, 'llama-named');
    await cp(GPT2, unknownTargets, { recursive: true });
    const config = JSON.parse(await readFile(path.join(unknownTargets, 'config.json'), 'utf8')) as Record<string, unknown>;
    // A model type the selector has no target names for: it falls back to q_proj/v_proj, which GPT-2's layers are not.
    await writeFile(path.join(unknownTargets, 'config.json'), JSON.stringify({ ...config, model_type: 'gpt2-renamed' }));
    const cases: [string[], RegExp][] = [
      [['--model', GPT2, '--context', '65'], /^lora: --context 65 is longer than the model's 64 positions \(n_positions in .*gpt2.config\.json\); pass --context 64 or less\.\n$/u],
      [['--model', GPT2, '--context', '1'], /--context must be an integer >= 2, got "1"/u],
      [['--model', unknownTargets, '--context', '32'], /targetModules must be names matching at least one linear layer of the model/u],
    ];
    for (const [flags, message] of cases) {
      const out = path.join(directory, 'refused-settings');
      const result = await run(['train', '--data', data, '--steps', '2', '--batch-size', '4', ...flags, '--out', out]);
      expect(result.code, flags.join(' ')).toBe(2);
      expect(result.stderr).toMatch(message);
      expect((await readdir(directory)).filter((name) => name.startsWith('refused-settings')), flags.join(' ')).toEqual([]);
    }
  });

  it('exits 1 on divergence, says where it stopped and what was kept, and keeps no non-finite tensor', async () => {
    const out = path.join(directory, 'diverged');
    const result = await run(['train', '--model', GPT2, '--data', data, '--steps', '3', '--context', '32', '--batch-size', '4', '--learning-rate', '1e20', '--out', out]);
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split('\n')).toHaveLength(1);
    expect(result.stderr).toMatch(/^lora: Training diverged at step \d: the (loss|global gradient norm) is (NaN|-?Infinity); the weights are those (after step \d|training started from).* Kept that adapter in .*diverged\.partial-[0-9a-f]+\/adapter; .*diverged was not written\. Start a new run with a lower --learning-rate \(--resume keeps the run's own\), or check the data\.\n$/u);
    expect(result.stderr).not.toMatch(/Lower the learning rate/u);
    expect(result.stdout).not.toMatch(/Saved/u);
    const staged = (await readdir(directory)).filter((name) => name.startsWith('diverged.partial-'));
    expect(staged).toHaveLength(1);
    expect((await readdir(directory)).includes('diverged')).toBe(false);
    const kept = path.join(directory, staged[0]!);
    const adapter = await readSafetensorsFile(path.join(kept, 'adapter', 'adapter_model.safetensors'));
    for (const [name, entry] of adapter.tensors) expect(countNonFinite(entry).count, name).toBe(0);
    const checkpoint = path.join(kept, 'checkpoint', 'trainer_checkpoint.safetensors');
    const hasCheckpoint = await readFile(checkpoint).then(() => true, () => false);
    if (hasCheckpoint) for (const [name, entry] of (await readSafetensorsFile(checkpoint)).tensors) expect(countNonFinite(entry).count, name).toBe(0);
    const infinite = await run(['train', '--model', GPT2, '--learning-rate', 'Infinity', '--out', path.join(directory, 'never')]);
    expect(infinite.code).toBe(2);
    expect(infinite.stderr).toMatch(/--learning-rate must be a finite number > 0, got "Infinity"/u);
  });

  it('resumes after a kill at a random step, and after Ctrl-C, to the same adapter bytes as an uninterrupted run', async () => {
    const straight = path.join(directory, 'straight');
    const uninterrupted = await run(common(straight));
    expect(uninterrupted.stderr).toBe('');
    expect(uninterrupted.code).toBe(0);
    const expected = await readFile(path.join(straight, 'adapter', 'adapter_model.safetensors'));

    const killStep = 2 + Math.floor(Math.random() * 5);
    const killedOut = path.join(directory, 'killed');
    const killed = await runUntilKilled(() => run(common(killedOut)), (point) => point.operation === 'train-step' && point.path === String(killStep));
    expect(killed.killed, `kill at step ${killStep}`).toBe(true);
    const resumed = await run(['train', '--resume', killedOut]);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toMatch(/resuming .*killed\.partial-[0-9a-f]+ from step \d\/6/u);
    expect((await readFile(path.join(killedOut, 'adapter', 'adapter_model.safetensors'))).equals(expected), `kill at step ${killStep}`).toBe(true);
    expect((await readdir(directory)).filter((name) => name.startsWith('killed.'))).toEqual([]);
    // Nothing the resumed run wrote (checkpoints included) looks changed by the user: it can be replaced.
    expect((await outputState(killedOut)).kind).toBe('ours');

    const stoppedOut = path.join(directory, 'stopped');
    let sent = false;
    const stopped = await run(common(stoppedOut), {
      onOutput: (screen) => {
        if (!sent && screen.includes('train step 3/6')) {
          sent = true;
          process.emit('SIGINT', 'SIGINT');
        }
      },
    });
    expect(stopped.code).toBe(130);
    expect(stopped.stderr.trim().split('\n')).toHaveLength(1);
    const line = /^lora: Interrupted at step (\d)\/6; kept the checkpoint of step \1 in (\S+)\. Resume with: lora train --resume (\S+)\n$/u.exec(stopped.stderr);
    expect(line, stopped.stderr).not.toBeNull();
    const again = await run(['train', '--resume', line![3]!]);
    expect(again.code).toBe(0);
    expect((await readFile(path.join(stoppedOut, 'adapter', 'adapter_model.safetensors'))).equals(expected)).toBe(true);
    const report = JSON.parse(await readFile(path.join(stoppedOut, 'report.json'), 'utf8')) as { resumedFromStep: number; losses: number[] };
    expect(report.resumedFromStep).toBe(Number(line![1]));
    expect(report.losses).toHaveLength(6 - report.resumedFromStep);
    expect((await outputState(stoppedOut)).kind).toBe('ours');
  });

  it('resumes an AdaLoRA run killed inside its pruning phase to the same adapter bytes and rank pattern as an uninterrupted run', async () => {
    // 6 steps: tinit 1, tfinal 1, deltaT 1, so global steps 2–4 prune on the cubic schedule and 5 fixes the pattern.
    const adalora = (out: string) => ['train', '--model', GPT2, '--data', data, '--steps', '6', '--context', '32', '--batch-size', '4', '--checkpoint-every', '1', '--dynamic', '--out', out];
    const straight = path.join(directory, 'adalora-straight');
    expect((await run(adalora(straight))).code).toBe(0);
    const killedOut = path.join(directory, 'adalora-killed');
    // Killed as step 5 starts: the checkpoint holds step 3, after the allocator masked at global step 2.
    const killed = await runUntilKilled(() => run(adalora(killedOut)), (point) => point.operation === 'train-step' && point.path === '5');
    expect(killed.killed).toBe(true);
    const resumed = await run(['train', '--resume', killedOut]);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toMatch(/resuming .*adalora-killed\.partial-[0-9a-f]+ from step 3\/6/u);
    const files = async (out: string) => Promise.all(['adapter_model.safetensors', 'adapter_config.json'].map((name) => readFile(path.join(out, 'adapter', name))));
    const [expectedTensors, expectedConfig] = await files(straight);
    const [tensors, config] = await files(killedOut);
    // The run pruned: some module keeps fewer than initR = 12 triplets.
    const pattern = (JSON.parse(expectedConfig!.toString()) as { rank_pattern: Record<string, boolean[]> }).rank_pattern;
    expect(Object.values(pattern).some((kept) => kept.filter(Boolean).length < 12)).toBe(true);
    expect(config!.toString()).toBe(expectedConfig!.toString());
    expect(tensors!.equals(expectedTensors!)).toBe(true);
  });

  it('replaces its own previous run in the default directory when re-run without flags, and prints one JSON document with --json', async () => {
    const cwd = process.cwd();
    const project = path.join(directory, 'rerun');
    await mkdir(project);
    process.chdir(project);
    try {
      const argv = ['train', '--model', GPT2, '--data', data, '--steps', '2', '--context', '32', '--batch-size', '4'];
      const first = await run(argv);
      expect(first.code).toBe(0);
      expect(first.stdout.split('\n')[0]).toMatch(/^backend: \S+/u);
      const second = await run([...argv, '--json']);
      expect(second.code).toBe(0);
      const parsed = JSON.parse(second.stdout) as { variant: string; adapter: string; report: { before: { tokens: number }; after: { tokens: number } } };
      expect(parsed.adapter).toBe(path.join(project, 'lora-runs', 'lora', 'adapter'));
      expect(parsed.report.after.tokens).toBe(parsed.report.before.tokens);
      expect(second.stderr).toMatch(/^backend: /u);
      expect(await readdir(path.join(project, 'lora-runs'))).toEqual(['lora']);
      expect((await readdir(path.join(project, 'lora-runs', 'lora'))).sort()).toEqual([OUTPUT_MARKER, 'adapter', 'report.json', 'report.md', 'run.json']);
    } finally {
      process.chdir(cwd);
    }
  });
});

describe('untrusted files stay data', () => {
  it('never imports or runs a module an adapter config names (peft_type, auto_mapping, base_model_name_or_path)', async () => {
    const directory = await mkdtemp(path.join(tmpdir(), 'selector-untrusted-'));
    const marker = path.join(directory, 'ran.txt');
    const evil = path.join(directory, 'evil.mjs');
    await writeFile(evil, `import { writeFileSync } from 'node:fs';\nwriteFileSync(${JSON.stringify(marker)}, 'ran');\nglobalThis.__loraEvilRan = true;\n`);
    const cwd = process.cwd();
    process.chdir(directory);
    try {
      for (const field of ['peft_type', 'auto_mapping', 'base_model_name_or_path'] as const) {
        const adapter = path.join(directory, `adapter-${field}`);
        await cp(path.join(FIXTURES, 'adapters/gpt2_lora'), adapter, { recursive: true });
        const config = JSON.parse(await readFile(path.join(adapter, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
        const reference = field === 'auto_mapping' ? { base_model_class: evil, parent_library: './evil.mjs' } : field === 'peft_type' ? './evil.mjs' : evil;
        config[field] = reference;
        await writeFile(path.join(adapter, 'adapter_config.json'), JSON.stringify(config));
        const input = path.join(directory, 'in.json');
        await writeFile(input, JSON.stringify({ input_ids: [[1, 2, 3]] }));
        await run(['forward', '--model', GPT2, '--adapter', adapter, '--input', input, '--out', path.join(directory, `out-${field}.json`)]);
        await run(['inspect', adapter]);
        await run(['merge', '--model', GPT2, '--adapter', adapter, '--out', path.join(directory, `merged-${field}`)]);
      }
      expect(await readFile(marker).then(() => true, () => false)).toBe(false);
      expect((globalThis as Record<string, unknown>)['__loraEvilRan']).toBeUndefined();
    } finally {
      process.chdir(cwd);
      await rm(directory, { recursive: true, force: true });
    }
  });
});
