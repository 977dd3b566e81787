import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { recipeFor, walkFlowchart, type Answer, type QuestionId } from '../src/index.js';
import { GPT2, run } from './helpers.js';

const leaves: { flags: string[]; variant: string; questions: QuestionId[] }[] = [
  { flags: ['--memory', 'extreme'], variant: 'qlora', questions: ['memoryExtreme'] },
  { flags: ['--memory', 'ample', '--multi-task', '--compute', 'substantial'], variant: 'hyperlora', questions: ['memoryExtreme', 'multiTask', 'computeSubstantial'] },
  { flags: ['--memory', 'ample', '--no-multi-task', '--dynamic', '--compute', 'limited'], variant: 'adalora', questions: ['memoryExtreme', 'multiTask', 'dynamic', 'computeSubstantial'] },
  { flags: ['--memory', 'limited', '--no-multi-task', '--no-dynamic', '--expressive'], variant: 'dora', questions: ['memoryExtreme', 'multiTask', 'dynamic', 'expressive'] },
  { flags: ['--memory', 'ample', '--no-multi-task', '--no-dynamic', '--no-expressive'], variant: 'lora', questions: ['memoryExtreme', 'multiTask', 'dynamic', 'expressive'] },
];

describe('lora select', () => {
  for (const leaf of leaves) {
    it(`reaches ${leaf.variant} from ${leaf.flags.join(' ')} and prints the path`, async () => {
      const text = await run(['select', '--model', GPT2, ...leaf.flags]);
      expect(text.code).toBe(0);
      expect(text.stdout).toMatch(new RegExp(`└─▶ ${{ qlora: 'QLoRA', hyperlora: 'HyperLoRA', adalora: 'AdaLoRA', dora: 'DoRA', lora: 'LoRA' }[leaf.variant]}\\n`, 'u'));
      expect(text.stdout).toContain('flag: --');
      // Every answer given is on the path: no note.
      expect(text.stderr).toBe('');
      const json = await run(['select', '--model', GPT2, '--json', ...leaf.flags]);
      expect(json.code).toBe(0);
      const result = JSON.parse(json.stdout) as { variant: string; path: { question: string; source: string }[]; recipe: { adapter: string; config: object } };
      expect(result.variant).toBe(leaf.variant);
      expect(result.path.map((step) => step.question)).toEqual(leaf.questions);
      expect(result.path.every((step) => step.source === 'flag')).toBe(true);
      expect(Object.keys(result.recipe.config).length).toBeGreaterThan(3);
    });
  }

  it('without a terminal, counts unanswered questions as no, says so, and measures memory', async () => {
    const result = await run(['select', '--model', GPT2, '--json']);
    const parsed = JSON.parse(result.stdout) as { variant: string; path: { question: string; source: string; detail: string }[] };
    expect(parsed.variant).toBe('lora');
    expect(parsed.path[0]).toMatchObject({ question: 'memoryExtreme', source: 'measurement' });
    expect(parsed.path[0]!.detail).toMatch(/float32 LoRA training needs ~.* <= .* free system memory/u);
    expect(parsed.path[1]!.detail).toContain('counts as no');
  });

  it('decides extreme memory by measurement against --memory-budget', async () => {
    const result = await run(['select', '--model', GPT2, '--memory-budget', '1MiB', '--json']);
    const parsed = JSON.parse(result.stdout) as { variant: string; path: { detail: string }[] };
    expect(parsed.variant).toBe('qlora');
    expect(parsed.path[0]!.detail).toMatch(/> 1\.0 MiB --memory-budget/u);
  });

  it('refuses a memory budget that is not a positive size, naming the flag or the config file (exit 2)', async () => {
    for (const budget of ['0', '0.2', '12 parsecs']) {
      const result = await run(['select', '--model', GPT2, '--memory-budget', budget]);
      expect(result.code, budget).toBe(2);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toContain(`--memory-budget must be a positive number of bytes or a size like 6GiB / 512MB, got "${budget}"`);
    }
    const { writeFile, mkdtemp } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const path = await import('node:path');
    const file = path.join(await mkdtemp(path.join(tmpdir(), 'selector-budget-')), 'selector.json');
    await writeFile(file, JSON.stringify({ memoryBudget: '0GiB' }));
    const fromFile = await run(['select', '--model', GPT2, '--config', file]);
    expect(fromFile.code).toBe(2);
    expect(fromFile.stderr).toContain(`${file}: memoryBudget must be a positive number of bytes or a size like 6GiB / 512MB, got "0GiB". Fix the file, or pass --memory-budget.`);
  });

  it('reads paths in a config file relative to the file, and says in words why a config or data file cannot be read', async () => {
    const { writeFile, mkdtemp, mkdir } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const path = await import('node:path');
    const directory = await mkdtemp(path.join(tmpdir(), 'selector-paths-'));
    await mkdir(path.join(directory, 'settings'));
    const file = path.join(directory, 'settings', 'selector.json');
    await writeFile(file, JSON.stringify({ data: 'texts.jsonl', memory: 'ample' }));
    // Run from elsewhere: the data file is looked for beside the config, and it is not there.
    const missing = await run(['train', '--model', GPT2, '--config', file, '--steps', '1', '--context', '16']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe(`lora: Data file ${path.join(directory, 'settings', 'texts.jsonl')} does not exist; pass a JSONL file of {"text": …} lines with --data.\n`);
    const noConfig = await run(['select', '--config', path.join(directory, 'nope.json')]);
    expect(noConfig.code).toBe(2);
    expect(noConfig.stderr).toBe(`lora: Config file ${path.join(directory, 'nope.json')} does not exist; check the --config path.\n`);
    const dataDirectory = await run(['train', '--model', GPT2, '--data', directory, '--steps', '1', '--context', '16']);
    expect(dataDirectory.code).toBe(2);
    expect(dataDirectory.stderr).toBe(`lora: Data file ${directory} is a directory, not a file; pass a JSONL file of {"text": …} lines with --data.\n`);
  });

  it('takes answers from a config file, below flags', async () => {
    const { writeFile, mkdtemp } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const path = await import('node:path');
    const directory = await mkdtemp(path.join(tmpdir(), 'selector-config-'));
    const file = path.join(directory, 'selector.json');
    await writeFile(file, JSON.stringify({ memory: 'ample', dynamic: true, compute: 'limited' }));
    const fromFile = JSON.parse((await run(['select', '--model', GPT2, '--config', file, '--json'])).stdout) as { variant: string; path: { source: string }[] };
    expect(fromFile.variant).toBe('adalora');
    expect(fromFile.path.map((s) => s.source)).toEqual(['config', 'default', 'config', 'config']);
    const overridden = JSON.parse((await run(['select', '--model', GPT2, '--config', file, '--no-dynamic', '--json'])).stdout) as { variant: string };
    expect(overridden.variant).toBe('lora');
    await writeFile(file, JSON.stringify({ memory: 'huge' }));
    const bad = await run(['select', '--model', GPT2, '--config', file]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^lora: Config file .*selector\.json: memory: /u);
  });

  it('asks on a terminal, offering the measured answer as the default', async () => {
    const input = new PassThrough();
    // Each answer is typed once its question is on the screen: memory? (Enter = the measured
    // default "no"), multi-task? n, dynamic? y, compute substantial? n  → AdaLoRA.
    const script: [string, string][] = [
      ['Are memory limitations extreme?', '\r'],
      ['Is multi-task capability needed?', 'n\r'],
      ['Is dynamic adaptation needed?', 'y\r'],
      ['Are computational resources substantial?', 'n\r'],
    ];
    let answered = 0;
    const result = await run(['select', '--model', GPT2, '--json'], {
      interactive: true,
      input,
      onOutput: (screen) => {
        const next = script[answered];
        if (next && screen.includes(next[0])) {
          answered += 1;
          setImmediate(() => input.write(next[1]));
        }
      },
    });
    expect(answered).toBe(4);
    expect(result.code).toBe(0);
    // With --json the questions go to stderr and stdout holds only the JSON document.
    expect(result.stderr).toContain('Are memory limitations extreme? (measured: float32 LoRA training needs');
    const parsed = JSON.parse(result.stdout) as { variant: string; path: { source: string; answer: boolean }[] };
    expect(parsed.variant).toBe('adalora');
    expect(parsed.path.map((s) => s.source)).toEqual(['prompt', 'prompt', 'prompt', 'prompt']);
    expect(parsed.path.map((s) => s.answer)).toEqual([false, false, true, false]);
  });

  it('names the package to install when a variant package is absent, without a stack trace', async () => {
    const missing = async (name: string): Promise<unknown> => {
      const error = new Error(`Cannot find package '${name}' imported from x`) as NodeJS.ErrnoException;
      error.code = 'ERR_MODULE_NOT_FOUND';
      throw error;
    };
    const agent = process.env['npm_config_user_agent'];
    try {
      // As when run with `pnpm lora …` (outside a workspace root: apps/selector has no pnpm-workspace.yaml).
      process.env['npm_config_user_agent'] = 'pnpm/9.15.9 npm/? node/v20.19.0 linux x64';
      const printed = await run(['select', '--model', GPT2, '--memory', 'extreme'], { loader: missing });
      expect(printed.code).toBe(0);
      expect(printed.stdout).toContain('Install with: pnpm add @lora/quant');
      const trained = await run(['train', '--model', GPT2, '--memory', 'extreme', '--out', '/tmp/never-written'], { loader: missing });
      expect(trained.code).toBe(1);
      expect(trained.stderr.trim().split('\n')).toHaveLength(1);
      expect(trained.stderr).toMatch(/^lora: QLoRA \(qlora\) needs @lora\/quant, which is not installed\. Install it with: pnpm add @lora\/quant\n$/u);
      expect(trained.stderr).not.toMatch(/\bat .*\(/u);
      process.env['npm_config_user_agent'] = 'yarn/1.22.22 npm/? node/v20.19.0 linux x64';
      expect((await run(['select', '--model', GPT2, '--memory', 'extreme'], { loader: missing })).stdout).toContain('Install with: yarn add @lora/quant');
      // HyperLoRA's package exists now: its install command is named like the others'.
      const hyper = await run(['select', '--model', GPT2, '--memory', 'ample', '--multi-task', '--compute', 'substantial'], { loader: missing });
      expect(hyper.stdout).toContain('yarn add @lora/hyper');
    } finally {
      if (agent === undefined) delete process.env['npm_config_user_agent'];
      else process.env['npm_config_user_agent'] = agent;
    }
  });

  it('says that training settings given to select without --run are not used', async () => {
    const result = await run(['select', '--model', GPT2, '--memory', 'ample', '--data', 'texts.jsonl', '--out', 'somewhere', '--learning-rate', '0.01']);
    expect(result.code).toBe(0);
    expect(result.stderr).toBe('lora: note: --data, --learning-rate, --out only apply to training; add --run to train with them.\n');
  });

  it('says that a flowchart answer whose question the path never asked did not affect the choice (a note, and unaskedFlags in --json)', async () => {
    // --compute is asked only after a multi-task or dynamic yes: on the way to LoRA it changes nothing.
    const compute = await run(['select', '--model', GPT2, '--memory', 'ample', '--no-multi-task', '--no-dynamic', '--compute', 'substantial']);
    expect(compute.code).toBe(0);
    expect(compute.stdout).toContain('└─▶ LoRA');
    expect(compute.stderr).toBe('lora: note: --compute substantial did not affect the choice of LoRA: the flowchart asks about compute only after a yes to multi-task or dynamic adaptation.\n');
    // The other answers asked only on some paths, the same way: --dynamic after a multi-task yes, --expressive after an adaptive yes.
    const json = await run(['select', '--model', GPT2, '--json', '--memory', 'ample', '--multi-task', '--no-dynamic', '--compute', 'limited', '--expressive']);
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.stdout) as { variant: string; unaskedFlags: unknown };
    expect(parsed.variant).toBe('adalora');
    expect(parsed.unaskedFlags).toEqual([
      { flag: '--no-dynamic', question: 'dynamic' },
      { flag: '--expressive', question: 'expressive' },
    ]);
    expect(json.stderr.trim().split('\n').at(-1)).toBe(
      'lora: note: --no-dynamic, --expressive did not affect the choice of AdaLoRA: the flowchart asks about dynamic adaptation only when memory limits are not extreme and multi-task is not needed, and about expressiveness only when memory limits are not extreme and neither multi-task nor dynamic adaptation is needed.',
    );
    // Extreme memory ends the path at its first question.
    const qlora = JSON.parse((await run(['select', '--model', GPT2, '--json', '--memory', 'extreme', '--no-multi-task'])).stdout) as { unaskedFlags: { flag: string }[] };
    expect(qlora.unaskedFlags.map((entry) => entry.flag)).toEqual(['--no-multi-task']);
  });

  it('says that --memory-budget did not affect the choice when --memory answered the memory question', async () => {
    const answered = await run(['select', '--model', GPT2, '--memory', 'ample', '--memory-budget', '1KiB', '--no-multi-task', '--no-dynamic', '--no-expressive']);
    expect(answered.code).toBe(0);
    expect(answered.stderr).toBe('lora: note: --memory-budget did not affect the choice of LoRA: --memory ample answered the memory question, so nothing was measured.\n');
    // Measured against it (1 KiB: extreme), it decides, and no note.
    const measured = await run(['select', '--model', GPT2, '--json', '--memory-budget', '1KiB', '--no-multi-task']);
    expect(measured.code).toBe(0);
    expect((JSON.parse(measured.stdout) as { variant: string }).variant).toBe('qlora');
    expect(measured.stderr).not.toContain('--memory-budget did not affect');
  });

  it('rejects an unknown flag with exit code 2 and one line of error', async () => {
    const result = await run(['select', '--bogus']);
    expect(result.code).toBe(2);
    expect(result.stderr).toBe("lora: unknown option '--bogus' (run with --help for usage)\n");
    const typo = await run(['trian']);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toBe("lora: unknown command 'trian' (Did you mean train?) (run with --help for usage)\n");
  });
});

describe('walkFlowchart', () => {
  it('asks only the questions on the path taken', async () => {
    const asked: QuestionId[] = [];
    const yes = (question: QuestionId): Answer => {
      asked.push(question);
      return { value: question === 'multiTask', source: 'flag', detail: '' };
    };
    const decision = await walkFlowchart(yes);
    expect(decision.variant).toBe('adalora');
    expect(asked).toEqual(['memoryExtreme', 'multiTask', 'computeSubstantial']);
  });
});

describe('recipeFor', () => {
  it('composes QLoRA as LoRA plus the quant transform, and schedules AdaLoRA over the run', () => {
    const context = { targetModules: ['c_attn'], fanInFanOut: true, steps: 200, taskType: 'CAUSAL_LM' as const };
    expect(recipeFor('qlora', context)).toMatchObject({ adapter: 'lora', transforms: ['quant'], packages: ['@lora/quant'] });
    expect(recipeFor('adalora', context).options).toMatchObject({ totalStep: 200, tinit: 20, tfinal: 20, deltaT: 10 });
  });

  it('passes the targets\' weight layout (GPT-2\'s Conv1D: fan_in_fan_out) to every variant whose config has it', () => {
    for (const fanInFanOut of [true, false]) {
      const context = { targetModules: ['c_attn'], fanInFanOut, steps: 200, taskType: 'CAUSAL_LM' as const };
      for (const variant of ['lora', 'qlora', 'dora', 'adalora'] as const) expect(recipeFor(variant, context).options, variant).toMatchObject({ fanInFanOut });
    }
  });
});
