// Every public package, packed and installed alone with plain npm outside the workspace, loads as
// ESM and CJS, trains one step, saves and reloads with the same outputs, and type-checks for a
// TypeScript consumer under node16 and bundler resolution; the CLI runs from its tarball; and a
// package with an undeclared dependency makes the check fail.
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  directoryBytes,
  npmInstall,
  packPublicPackages,
  runChecked,
  runNodeScript,
  scratchDirectory,
  typecheckConsumer,
  type PackedPackage,
} from '../src/install-check.js';
import { RELOAD_TOLERANCE, smokeScriptCjs, smokeScriptEsm, type SmokeSpec } from '../src/smoke-script.js';
import { SIZE_BUDGETS, formatSizeTable, type MeasuredSizes } from '../src/size-budget.js';
import { publicPackages } from '../src/workspace.js';

// tfjs-core as the README tells users to install it: the exact version the pinned backends accept.
const tfjsCore = `@tensorflow/tfjs-core@${publicPackages().find((entry) => entry.manifest.name === '@lora/core')!.manifest.peerDependencies!['@tensorflow/tfjs-core']}`;

interface Scenario {
  /** The package this scenario is about. */
  subject: string;
  /** Our packages installed from tarballs (besides tfjs-core from the registry). */
  packages: string[];
  smoke: SmokeSpec;
  /** A TypeScript consumer (ESM syntax; also checked as .cts under node16). */
  consumer: string;
}

const consumerBase = `import * as tf from '@tensorflow/tfjs-core';
import { AdapterModel, Linear, Module, createLoraRegistry, lora, type LoraRegistry } from '@lora/core';
import { camelToSnake } from '@lora/core/internal';
class Net extends Module {
  readonly fc1 = this.registerModule('fc1', new Linear({ inFeatures: 64, outFeatures: 64, seed: 1 }));
  forward(x: tf.Tensor): tf.Tensor {
    return this.fc1.forward(x);
  }
}
export const snake: string = camelToSnake('loraAlpha');
`;

/**
 * A scenario: `@lora/core` and `subject` installed (with `alsoInstalled`); the smoke script imports
 * the subject under its name after `@lora/`, camel-cased (`@lora/cuda-backend` → `cudaBackend`).
 */
function scenario(subject: string, smoke: Omit<SmokeSpec, 'imports'>, consumer: string, alsoInstalled: readonly string[] = []): Scenario {
  const localName = subject.slice('@lora/'.length).replace(/-(\w)/gu, (_, letter: string) => letter.toUpperCase());
  return {
    subject,
    packages: [...new Set(['@lora/core', subject, ...alsoInstalled])],
    smoke: { imports: subject === '@lora/core' ? {} : { [localName]: subject }, ...smoke },
    consumer,
  };
}

/** A package whose scenario adapts a small network with its plugin: the smoke script's `Net` (fc1, fc2) and the consumer's (fc1). */
interface AdapterCase {
  readonly subject: string;
  /** `AdapterModel.create`'s options besides the registry, in both; `config` without `targetModules`. */
  readonly options: { readonly plugin?: string; readonly config: Readonly<Record<string, unknown>>; readonly transforms?: readonly string[] };
  /** The smoke script's registry plugins (JavaScript; `core` and the subject's local name are in scope). */
  readonly smokePlugins: string;
  /** The smoke steps that differ from the defaults (HyperLoRA's forward takes conditions, AdaLoRA saves its own way, …). */
  readonly smokeSteps?: Pick<SmokeSpec, 'forward' | 'reload' | 'save'>;
  /** The TypeScript consumer: its import line, its registry plugins, any statements after the model. */
  readonly consumer: { readonly imports: string; readonly plugins: string; readonly extra?: string };
}

function adapterScenario(adapter: AdapterCase): Scenario {
  // JSON is both JavaScript and TypeScript source; the consumer lists the fields beside `registry`
  // (not spread), so TypeScript checks them against the options type.
  const createOptions = (targetModules: readonly string[]): string => JSON.stringify({ ...adapter.options, config: { ...adapter.options.config, targetModules } });
  const consumer = `${consumerBase}${adapter.consumer.imports}
const registry: LoraRegistry = createLoraRegistry({ plugins: ${adapter.consumer.plugins} });
export const model: AdapterModel<Net> = AdapterModel.create(new Net(), { registry, ${createOptions(['fc1']).slice(1, -1)} });
${adapter.consumer.extra ?? ''}`;
  return scenario(adapter.subject, { plugins: adapter.smokePlugins, create: createOptions(['fc1', 'fc2']), ...adapter.smokeSteps }, consumer);
}

const loraConfig = { r: 4, loraAlpha: 8 };

const adapterCases: AdapterCase[] = [
  { subject: '@lora/core', options: { config: loraConfig }, smokePlugins: '[core.lora({ seed: 0 })]', consumer: { imports: '', plugins: '[lora()]' } },
  {
    subject: '@lora/dora',
    options: { plugin: 'dora', config: loraConfig },
    smokePlugins: '[core.lora(), dora.dora({ seed: 0 })]',
    consumer: { imports: "import { dora, doubleLora } from '@lora/dora';", plugins: '[lora(), dora(), doubleLora()]' },
  },
  {
    subject: '@lora/quant',
    options: { config: loraConfig, transforms: ['quant'] },
    smokePlugins: "[core.lora({ seed: 0 }), quant.quant({ type: 'nf4', doubleQuant: true })]",
    smokeSteps: {
      // The same seeded base quantized the same way, then the LoRA adapter loaded onto it.
      reload:
        "async (directory) => { const base = await makeBase(); quant.quantizeModel(base, { type: 'nf4', doubleQuant: true }); return core.loadAdapterModel(base, directory, { registry }); }",
    },
    consumer: {
      imports: "import { AdamW8bit, quant } from '@lora/quant';",
      plugins: "[lora(), quant({ type: 'nf4' })]",
      extra: 'export const optimizer: AdamW8bit = new AdamW8bit({ learningRate: 1e-3 });\n',
    },
  },
  {
    subject: '@lora/adalora',
    options: { plugin: 'adalora', config: { initR: 4, targetR: 2, totalStep: 10, tinit: 2, tfinal: 2, deltaT: 1, loraAlpha: 8 } },
    smokePlugins: '[adalora.adalora({ seed: 0 })]',
    smokeSteps: { save: '(peft, directory) => adalora.saveAdaLoraAdapter(peft, directory)' },
    consumer: { imports: "import { adalora } from '@lora/adalora';", plugins: '[adalora()]' },
  },
  {
    subject: '@lora/hyper',
    options: { plugin: 'hyper', config: { ...loraConfig, trunkWidth: 16, condition: { kind: 'discrete', factors: [{ name: 'task', values: ['qa', 'summary'] }] } } },
    smokePlugins: '[core.lora(), hyper.hyper({ seed: 0 })]',
    smokeSteps: {
      // Per-row conditions, both tasks in one batch: the generator trains, saves once and reloads.
      forward: "(peft, input) => peft.withAdapterInputs({ condition: Array.from({ length: 16 }, (_, i) => ({ task: i % 2 === 0 ? 'qa' : 'summary' })) }, () => peft.model.forward(input))",
    },
    consumer: {
      imports: "import { hyper, type HyperLoraConfig } from '@lora/hyper';",
      plugins: '[lora(), hyper({ seed: 1 })]',
      extra: "export const logits: tf.Tensor = model.withAdapterInputs({ condition: { task: 'qa' } }, () => model.model.forward(tf.zeros([1, 64])));\nexport type Config = HyperLoraConfig;\n",
    },
  },
];

const scenarios: Scenario[] = [
  ...adapterCases.map(adapterScenario),
  scenario(
    '@lora/models',
    {
      makeBase: 'async () => (await models.loadBundledBase()).model',
      plugins: '[core.lora({ seed: 0 })]',
      create: '{ config: { r: 4, loraAlpha: 8, fanInFanOut: true } }',
      input: "tf.tensor2d([Array.from({ length: 16 }, (_, i) => (i * 37) % 256)], undefined, 'int32')",
      loss: '(model, ids) => tf.tidy(() => core.causalLmLoss(model.forward(ids), ids))',
    },
    `${consumerBase}import { ByteTokenizer, loadBundledBase, type Gpt2LMHeadModel } from '@lora/models';
const loaded: Promise<{ model: Gpt2LMHeadModel; tokenizer: ByteTokenizer }> = loadBundledBase({ directory: 'somewhere' });
export { loaded };
`,
    ['@lora/base-moby'],
  ),
  scenario(
    '@lora/cuda-backend',
    {
      runtime: 'const report = await cudaBackend.useBestBackend(); if (!report.backend) throw new Error("no backend picked");',
      plugins: '[core.lora({ seed: 0 })]',
      create: "{ config: { r: 4, loraAlpha: 8, targetModules: ['fc1', 'fc2'] } }",
    },
    `${consumerBase}import { useBestBackend, type BackendReport } from '@lora/cuda-backend';
export const report: Promise<BackendReport> = useBestBackend();
`,
  ),
];

let root: string;
let packed: Map<string, PackedPackage>;
const installedBytes: Record<string, number> = {};

function tarballs(names: readonly string[]): string[] {
  return names.map((name) => {
    const entry = packed.get(name);
    if (!entry) throw new Error(`${name} was not packed; public packages: ${[...packed.keys()].join(', ')}`);
    return entry.tarball;
  });
}

beforeAll(async () => {
  root = scratchDirectory('lora-install-check-');
  packed = await packPublicPackages(root);
}, 600_000);

afterAll(() => {
  if (packed) {
    const measured: MeasuredSizes = {
      tarballBytes: Object.fromEntries([...packed.values()].map((entry) => [entry.name, entry.bytes])),
      installedBytes,
    };
    console.log(formatSizeTable(measured));
  }
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('packed tarballs', () => {
  it('exist for every public package and hold no workspace: or catalog: range', async () => {
    expect([...packed.keys()].sort()).toEqual(publicPackages().map((entry) => entry.manifest.name).sort());
    for (const entry of packed.values()) {
      const manifest = await runChecked('tar', ['-xzOf', entry.tarball, 'package/package.json'], { cwd: root });
      expect(manifest, entry.name).not.toMatch(/"(workspace|catalog):/);
      const files = (await runChecked('tar', ['-tzf', entry.tarball], { cwd: root })).split('\n');
      expect(files, entry.name).toContain('package/LICENSE');
      expect(files.filter((file) => file.endsWith('.map')), entry.name).toEqual([]);
    }
  });

  it('fit their size budgets', () => {
    for (const entry of packed.values()) {
      const budget = SIZE_BUDGETS.tarballBytes[entry.name];
      expect(budget, `${entry.name} has a tarball budget in src/size-budget.ts`).toBeDefined();
      expect(entry.bytes, `${entry.name} tarball bytes`).toBeLessThanOrEqual(budget!);
    }
  });
});

describe.each(scenarios.map((scenario) => [scenario.subject, scenario] as const))('%s installed alone with npm', (subject, scenario) => {
  it(
    'trains one step, saves and reloads with the same outputs as ESM and CJS, and type-checks under node16 and bundler',
    async () => {
      const directory = join(root, subject.replace(/[@/]/g, '_'));
      await npmInstall(directory, [...tarballs(scenario.packages), tfjsCore]);
      // No variant pulls in another: exactly the packages asked for are installed.
      expect(readdirSync(join(directory, 'node_modules/@lora')).sort()).toEqual(
        scenario.packages.map((name) => name.replace('@lora/', '')).sort(),
      );
      // Two at a time: the machine has 2 cores.
      const runs = await Promise.all([
        runNodeScript(directory, 'smoke.mjs', smokeScriptEsm(scenario.smoke)).then((output) => ['smoke.mjs', output] as const),
        runNodeScript(directory, 'smoke.cjs', smokeScriptCjs(scenario.smoke)).then((output) => ['smoke.cjs', output] as const),
      ]);
      for (const [file, output] of runs) {
        const summary = JSON.parse(output.trim().split('\n').at(-1)!) as { loss: number; moved: number; reloadDifference: number; files: string[] };
        expect(Number.isFinite(summary.loss), file).toBe(true);
        expect(summary.moved, file).toBeGreaterThan(0);
        expect(summary.reloadDifference, file).toBeLessThanOrEqual(RELOAD_TOLERANCE);
        expect(summary.files, file).toContain('adapter_config.json');
      }
      await Promise.all([
        typecheckConsumer(directory, { 'consumer.ts': scenario.consumer, 'consumer.cts': scenario.consumer }, 'node16'),
        typecheckConsumer(directory, { 'consumer.ts': scenario.consumer }, 'bundler'),
      ]);
      installedBytes[subject] = directoryBytes(join(directory, 'node_modules'));
      const budget = SIZE_BUDGETS.installedBytes[subject];
      expect(budget, `${subject} has an install budget in src/size-budget.ts`).toBeDefined();
      expect(installedBytes[subject], `${subject} installed bytes`).toBeLessThanOrEqual(budget!);
      rmSync(directory, { recursive: true, force: true });
    },
    600_000,
  );
});

describe('@lora/models without @lora/base-moby', () => {
  it('names the package to install when the bundled base is asked for', async () => {
    const directory = join(root, 'models-without-base');
    await npmInstall(directory, [...tarballs(['@lora/core', '@lora/models']), tfjsCore]);
    const output = await runNodeScript(
      directory,
      'missing-base.mjs',
      `import { loadBundledBase } from '@lora/models';
try { await loadBundledBase(); console.log('loaded'); } catch (error) { console.log(error.name + ': ' + error.message); }\n`,
    );
    expect(output).toMatch(/^LoraError: .*@lora\/base-moby, which is not installed\. .*`npm install @lora\/base-moby`/m);
    rmSync(directory, { recursive: true, force: true });
  }, 600_000);
});

describe('@lora/selector (the lora CLI) installed with npm', () => {
  it('trains in an empty directory, and names, then loads, a variant package', async () => {
    const directory = join(root, 'selector');
    await npmInstall(directory, tarballs(['@lora/selector', '@lora/core', '@lora/models', '@lora/base-moby', '@lora/cuda-backend']));
    const lora = join(directory, 'node_modules/.bin/lora');
    expect(await runChecked(lora, ['--help'], { cwd: directory })).toMatch(/train/);

    // The default corpus is a declared dependency and loads from the install …
    const speeches = await runNodeScript(
      directory,
      'corpus.mjs',
      "import { loadStateOfTheUnion } from '@lora/models';\nconsole.log((await loadStateOfTheUnion()).length);\n",
    );
    expect(Number(speeches.trim())).toBeGreaterThan(100);
    // … but training on it evaluates 8,192 validation tokens twice; a small JSONL keeps this check short.
    const texts = Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: `Call me Ishmael, said the sailor of watch ${i}, and the sea was grey.` }));
    writeFileSync(join(directory, 'texts.jsonl'), `${texts.join('\n')}\n`);
    const fast = ['--data', 'texts.jsonl', '--steps', '2', '--batch-size', '2', '--context', '32', '--memory', 'ample', '--no-multi-task', '--no-dynamic'];
    const trained = await runChecked(lora, ['train', ...fast, '--no-expressive'], { cwd: directory });
    expect(trained).toMatch(/validation after/);
    const adapterConfig = JSON.parse(readFileSync(join(directory, 'lora-runs/lora/adapter/adapter_config.json'), 'utf8')) as { peft_type: string };
    expect(adapterConfig.peft_type).toBe('LORA');
    expect(existsSync(join(directory, 'lora-runs/lora/report.json'))).toBe(true);

    // DoRA is an optional package: named with an npm command while missing …
    await expect(runChecked(lora, ['train', ...fast, '--expressive'], { cwd: directory })).rejects.toThrow(
      /needs @lora\/dora, which is not installed\. Install it with: npm install @lora\/dora/,
    );
    // … and found once that command's package is there.
    await npmInstall(directory, tarballs(['@lora/dora']));
    const selection = JSON.parse(await runChecked(lora, ['select', ...fast, '--expressive', '--json'], { cwd: directory })) as {
      variant: string;
      recipe: { missingPackages: string[] };
    };
    expect(selection.variant).toBe('dora');
    expect(selection.recipe.missingPackages).toEqual([]);
    rmSync(directory, { recursive: true, force: true });
  }, 600_000);
});

describe('the install check', () => {
  it('fails for a package whose code imports a dependency it does not declare', async () => {
    const directory = join(root, 'undeclared');
    const fixture = fileURLToPath(new URL('fixtures/undeclared-dependency', import.meta.url));
    const tarball = (await runChecked('npm', ['pack', '--silent', '--pack-destination', root, fixture], { cwd: root })).trim().split('\n').at(-1)!;
    await npmInstall(directory, [...tarballs(['@lora/core']), join(root, tarball), tfjsCore]);
    const spec: SmokeSpec = {
      imports: { fixture: '@lora-fixture/undeclared-dependency' },
      plugins: '[fixture.undeclared({ seed: 0 })]',
      create: "{ config: { r: 4, loraAlpha: 8, targetModules: ['fc1', 'fc2'] } }",
    };
    await expect(runNodeScript(directory, 'smoke.mjs', smokeScriptEsm(spec))).rejects.toThrow(/Cannot find package '@lora\/models'/);
    rmSync(directory, { recursive: true, force: true });
  }, 600_000);
});
