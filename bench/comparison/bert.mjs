// The guide's headline figures on its own architecture: BERT-base shape (12 layers, d 768, vocab
// 30522) with random weights, which is enough for counting parameters and measuring buffers.
import { memoryReport, quant } from '@lora/quant';
import { core, models } from '../lib/packages.mjs';

/** BERT-base's config.json (bert-base-uncased), with `layers` blocks. */
export function bertBaseConfig(layers = 12) {
  return {
    architectures: ['BertForSequenceClassification'],
    model_type: 'bert',
    vocab_size: 30522,
    hidden_size: 768,
    num_hidden_layers: layers,
    num_attention_heads: 12,
    intermediate_size: 3072,
    max_position_embeddings: 512,
    type_vocab_size: 2,
    num_labels: 2,
    hidden_act: 'gelu',
    hidden_dropout_prob: 0,
    attention_probs_dropout_prob: 0,
  };
}

const LAST_LAYER = 'bert\\.encoder\\.layer\\.LAST\\.attention\\.self\\.(query|value)';

/** The LoRA settings whose trainable counts the report shows (the guide's example cites ≈5 k). */
export const BERT_LORA_SETTINGS = [
  { label: 'r 1 on query/value, all layers', config: { r: 1, loraAlpha: 1, targetModules: ['query', 'value'] } },
  { label: 'r 8 on query/value, all layers', config: { r: 8, loraAlpha: 16, targetModules: ['query', 'value'] } },
  { label: 'r 16 on query/value, all layers', config: { r: 16, loraAlpha: 32, targetModules: ['query', 'value'] } },
  { label: 'r 1 on query/value of the last layer only', config: { r: 1, loraAlpha: 1, targetModules: LAST_LAYER }, lastLayerOnly: true },
  {
    label: 'r 1 on query/value of the last layer + the 2-label classifier head',
    config: { r: 1, loraAlpha: 1, targetModules: LAST_LAYER, modulesToSave: ['classifier'] },
    lastLayerOnly: true,
  },
];

/**
 * Trainable parameters under each LoRA setting, and the 4-bit memory of the linear weights with and
 * without double quantization (from `memoryReport`, which reads the packed buffers).
 */
export function measureBertBase({ layers = 12, log = () => {} } = {}) {
  const counting = [];
  // One model for every setting and the first quantization (building 109 M random weights is the
  // slow part): each adapter is unloaded before the next is added; quantizing replaces the linear
  // layers, so it comes last.
  let model = models.createModel(bertBaseConfig(layers), { seed: 1 });
  try {
    for (const setting of BERT_LORA_SETTINGS) {
      const config = setting.lastLayerOnly ? { ...setting.config, targetModules: setting.config.targetModules.replace('LAST', String(layers - 1)) } : setting.config;
      const adapterModel = core.AdapterModel.create(model, { registry: core.createLoraRegistry({ plugins: [core.lora({ seed: 1 })] }), config });
      const report = adapterModel.trainableParameters();
      counting.push({ label: setting.label, r: config.r, trainable: report.trainable, total: report.total, percent: report.percent });
      adapterModel.unload();
      log(`  BERT-base LoRA ${setting.label}: ${report.trainable.toLocaleString('en-US')} trainable of ${report.total.toLocaleString('en-US')}`);
    }
  } catch (error) {
    model.dispose();
    throw error;
  }
  const quantization = [];
  for (const doubleQuant of [false, true]) {
    model ??= models.createModel(bertBaseConfig(layers), { seed: 1 });
    // LoRA r 8 on query/value over the 4-bit base: QLoRA's recipe.
    const registry = core.createLoraRegistry({ plugins: [core.lora({ seed: 1 }), quant({ type: 'nf4', doubleQuant })] });
    const adapterModel = core.AdapterModel.create(model, { registry, config: BERT_LORA_SETTINGS[1].config, transforms: ['quant'] });
    const report = memoryReport(adapterModel.model);
    const quantized = report.packedWeights + report.quantState + report.quantTables;
    quantization.push({
      doubleQuant,
      layers: report.quantizedLayers,
      float32Bytes: report.float32Equivalent,
      quantizedBytes: quantized,
      reduction: 1 - quantized / report.float32Equivalent,
      bitsPerParameter: report.bitsPerParameter,
      otherBytes: report.otherParameters,
    });
    adapterModel.dispose();
    model = null;
    log(`  BERT-base NF4${doubleQuant ? ' + double quant' : ''}: ${(100 * (1 - report.quantizedFraction)).toFixed(2)}% smaller linear weights`);
  }
  return { layers, counting, quantization };
}
