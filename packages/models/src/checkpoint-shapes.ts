import { CheckpointError, ConfigError, type SafetensorsEntry } from '@lora/core';
import { parseBertConfig } from './bert-config.js';
import { PACKAGE, type ConfigJson } from './config-fields.js';
import { parseGpt2Config } from './gpt2-config.js';
import { parseLlamaConfig } from './llama-config.js';
import type { ArchitectureName } from './pretrained-model.js';

/** One axis of a tensor whose size a config field sets: `factor × json[field]` (or `size` when derived). */
interface ImpliedAxis {
  readonly field: string;
  readonly size: number;
  /** How the axis follows from the field, for messages, e.g. `3 × n_embd`. */
  readonly label: string;
}

interface ImpliedTensor {
  /** Name inside the base model (no `transformer.` / `model.` / `bert.` prefix). */
  readonly name: string;
  readonly axes: readonly ImpliedAxis[];
}

interface ImpliedLayout {
  readonly prefix: string;
  /** Module list of the layers inside the base model, e.g. `h` or `encoder.layer`. */
  readonly layers: string;
  readonly layerField: string;
  readonly layerCount: number;
  /** The token embedding first: a checkpoint without it is not of this architecture. */
  readonly tensors: readonly ImpliedTensor[];
}

function axis(field: string, size: number, label = field): ImpliedAxis {
  return { field, size, label };
}

function layout(architecture: ArchitectureName, json: ConfigJson, source: string): ImpliedLayout {
  if (architecture === 'GPT2LMHeadModel' || architecture === 'GPT2Model') {
    const c = parseGpt2Config(json, source);
    const e = axis('n_embd', c.nEmbd);
    return {
      prefix: 'transformer',
      layers: 'h',
      layerField: 'n_layer',
      layerCount: c.nLayer,
      tensors: [
        { name: 'wte.weight', axes: [axis('vocab_size', c.vocabSize), e] },
        { name: 'wpe.weight', axes: [axis('n_positions', c.nPositions), e] },
        { name: 'h.0.attn.c_attn.weight', axes: [e, axis('n_embd', 3 * c.nEmbd, '3 × n_embd')] },
        { name: 'h.0.mlp.c_fc.weight', axes: [e, axis(c.json['n_inner'] == null ? 'n_embd' : 'n_inner', c.nInner, c.json['n_inner'] == null ? '4 × n_embd' : 'n_inner')] },
      ],
    };
  }
  if (architecture === 'LlamaForCausalLM' || architecture === 'LlamaModel') {
    const c = parseLlamaConfig(json, source);
    const h = axis('hidden_size', c.hiddenSize);
    const headDim = c.json['head_dim'] == null ? 'hidden_size / num_attention_heads' : 'head_dim';
    return {
      prefix: 'model',
      layers: 'layers',
      layerField: 'num_hidden_layers',
      layerCount: c.numHiddenLayers,
      tensors: [
        { name: 'embed_tokens.weight', axes: [axis('vocab_size', c.vocabSize), h] },
        { name: 'layers.0.self_attn.q_proj.weight', axes: [axis('num_attention_heads', c.numAttentionHeads * c.headDim, `num_attention_heads × ${headDim}`), h] },
        { name: 'layers.0.self_attn.k_proj.weight', axes: [axis('num_key_value_heads', c.numKeyValueHeads * c.headDim, `num_key_value_heads × ${headDim}`), h] },
        { name: 'layers.0.mlp.gate_proj.weight', axes: [axis('intermediate_size', c.intermediateSize), h] },
      ],
    };
  }
  const c = parseBertConfig(json, source);
  const h = axis('hidden_size', c.hiddenSize);
  return {
    prefix: 'bert',
    layers: 'encoder.layer',
    layerField: 'num_hidden_layers',
    layerCount: c.numHiddenLayers,
    tensors: [
      { name: 'embeddings.word_embeddings.weight', axes: [axis('vocab_size', c.vocabSize), h] },
      { name: 'embeddings.position_embeddings.weight', axes: [axis('max_position_embeddings', c.maxPositionEmbeddings), h] },
      { name: 'embeddings.token_type_embeddings.weight', axes: [axis('type_vocab_size', c.typeVocabSize), h] },
      { name: 'encoder.layer.0.attention.self.query.weight', axes: [h, h] },
      { name: 'encoder.layer.0.intermediate.dense.weight', axes: [axis('intermediate_size', c.intermediateSize), h] },
    ],
  };
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return row[b.length]!;
}

/** A key of the config that is not `field` but is spelled almost like it (`n_embed` for `n_embd`): a likely typo. */
function typoOf(json: ConfigJson, field: string): string | undefined {
  if (json[field] !== undefined) return undefined;
  return Object.keys(json).find((key) => key !== field && editDistance(key, field) <= 2);
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/**
 * Compare the shapes a config implies (the token embedding, one layer's projections, the number of
 * layers) with a checkpoint's tensors, before any parameter is allocated: a config that does not
 * belong to the weights (a default 6.7B Llama beside a small GPT-2) fails here instead of building
 * a huge model.
 *
 * @throws {CheckpointError} when the checkpoint lacks the architecture's token embedding, or a tensor's
 *   shape disagrees with the config (the message names the config field, `mismatched` the tensor).
 * @throws {ConfigError} naming the layer count when the checkpoint holds fewer layers than the config.
 */
export function checkConfigAgainstCheckpoint(
  architecture: ArchitectureName,
  json: ConfigJson,
  tensors: ReadonlyMap<string, Pick<SafetensorsEntry, 'shape'>>,
  options: { configFile: string; checkpoint: string },
): void {
  const implied = layout(architecture, json, options.configFile);
  const find = (name: string): { key: string; shape: readonly number[] } | undefined => {
    for (const key of [`${implied.prefix}.${name}`, name]) {
      const entry = tensors.get(key);
      if (entry) return { key, shape: entry.shape };
    }
    return undefined;
  };
  const embedding = implied.tensors[0]!;
  if (!find(embedding.name)) {
    const sample = [...tensors.keys()].slice(0, 3).join(', ');
    throw new CheckpointError(
      `[${PACKAGE}] ${options.configFile} describes a ${architecture}, but the checkpoint in ${options.checkpoint} has no ${implied.prefix}.${embedding.name} ` +
        `(it holds ${sample || 'no tensors'}${tensors.size > 3 ? ', …' : ''}). Check that config.json (architectures, model_type) belongs to these weights, or drop the architecture option.`,
      { plugin: PACKAGE, missing: [`${implied.prefix}.${embedding.name}`] },
    );
  }
  for (const tensor of implied.tensors) {
    const found = find(tensor.name);
    if (!found) continue; // reported as missing by the load itself
    const expected = tensor.axes.map((a) => a.size);
    const index = found.shape.length !== expected.length ? 0 : expected.findIndex((size, i) => found.shape[i] !== size);
    if (index < 0) continue;
    const bad = tensor.axes[index]!;
    const typo = typoOf(json, bad.field);
    const value = json[bad.field] === undefined ? `${bad.size} (the default)` : JSON.stringify(json[bad.field]);
    throw new CheckpointError(
      `[${PACKAGE}] The checkpoint in ${options.checkpoint} does not fit ${options.configFile}: ${bad.field} is ${value}${bad.label === bad.field ? '' : `, so ${bad.label} = ${bad.size},`} ` +
        `but ${found.key} is ${shapeText(found.shape)} (${found.key} (expected ${shapeText(expected)}, found ${shapeText(found.shape)})). ` +
        (typo ? `${options.configFile} has ${typo}: did you mean ${bad.field}? ` : '') +
        'Check that config.json belongs to these weights; nothing was allocated.',
      { plugin: PACKAGE, mismatched: [{ name: found.key, expected, received: [...found.shape] }] },
    );
  }
  // A layer the config asks for and the checkpoint lacks would be built from scratch: refuse before allocating it.
  const layerPattern = new RegExp(`^(?:${implied.prefix}\\.)?${implied.layers.replace('.', '\\.')}\\.(\\d+)\\.`, 'u');
  let held = 0;
  for (const key of tensors.keys()) {
    const match = layerPattern.exec(key);
    if (match) held = Math.max(held, Number(match[1]) + 1);
  }
  if (held < implied.layerCount) {
    const typo = typoOf(json, implied.layerField);
    throw new ConfigError({
      plugin: PACKAGE,
      field: implied.layerField,
      received: json[implied.layerField] ?? `${implied.layerCount} (the default)`,
      expected: `at most the ${held} layer${held === 1 ? '' : 's'} the checkpoint in ${options.checkpoint} holds (in ${options.configFile})`,
      hint: (typo ? `${options.configFile} has ${typo}: did you mean ${implied.layerField}? ` : '') + 'Check that config.json belongs to these weights; nothing was allocated.',
    });
  }
}
