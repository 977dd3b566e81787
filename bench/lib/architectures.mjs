// The architectures the `architectures` section of `pnpm bench` trains LoRA on, each at the `small`
// sizes (d 256, 4 layers, 4 heads, batch 8 × 128, vocab 257; about 3.3 M parameters): @lora/models'
// GPT-2, Llama (with and without grouped-query attention) and a BERT classifier (padded batch),
// built from configs, LoRA r = 8 on their attention projections.
import { core, models, tf } from './packages.mjs';
import { CONFIGS, makeBatches } from './gpt2.mjs';

const SMALL = CONFIGS.small;

/** Per architecture: the Hugging Face config, the LoRA config, and whether it is a classifier. */
export const ARCHITECTURES = {
  gpt2: {
    config: { architectures: ['GPT2LMHeadModel'], vocab_size: SMALL.vocabSize, n_positions: SMALL.seqLen, n_embd: SMALL.nEmbd, n_layer: SMALL.nLayer, n_head: SMALL.nHead, attn_pdrop: 0, embd_pdrop: 0, resid_pdrop: 0 },
    lora: { targetModules: ['attn.c_attn', 'attn.c_proj'], fanInFanOut: true },
  },
  llama: {
    config: { architectures: ['LlamaForCausalLM'], vocab_size: SMALL.vocabSize, hidden_size: SMALL.nEmbd, intermediate_size: 688, num_hidden_layers: SMALL.nLayer, num_attention_heads: SMALL.nHead, max_position_embeddings: SMALL.seqLen },
    lora: { targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] },
  },
  'llama-gqa': {
    config: { architectures: ['LlamaForCausalLM'], vocab_size: SMALL.vocabSize, hidden_size: SMALL.nEmbd, intermediate_size: 688, num_hidden_layers: SMALL.nLayer, num_attention_heads: SMALL.nHead, num_key_value_heads: 2, max_position_embeddings: SMALL.seqLen },
    lora: { targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] },
  },
  bert: {
    config: { architectures: ['BertForSequenceClassification'], vocab_size: SMALL.vocabSize, hidden_size: SMALL.nEmbd, intermediate_size: 4 * SMALL.nEmbd, num_hidden_layers: SMALL.nLayer, num_attention_heads: SMALL.nHead, max_position_embeddings: SMALL.seqLen, num_labels: 2, hidden_dropout_prob: 0, attention_probs_dropout_prob: 0 },
    lora: { targetModules: ['query', 'key', 'value', 'attention.output.dense'], modulesToSave: ['classifier'] },
    classifier: true,
  },
};

/**
 * A seeded model of `name` with a LoRA adapter (r 8, alpha 16), one deterministic batch and its loss
 * function. `dispose` frees them.
 */
export function architectureRun(name) {
  const entry = ARCHITECTURES[name];
  if (!entry) throw new Error(`Unknown architecture "${name}". Known: ${Object.keys(ARCHITECTURES).join(', ')}.`);
  const model = models.createModel(entry.config, { seed: 1 });
  core.AdapterModel.create(model, { registry: core.createLoraRegistry({ plugins: [core.lora({ seed: 3 })] }), config: { r: 8, loraAlpha: 16, ...entry.lora } });
  const [{ inputIds }] = makeBatches(SMALL, 1);
  if (!entry.classifier) {
    return { model, lossFn: () => core.causalLmLoss(model.forward(inputIds), inputIds), dispose: () => (inputIds.dispose(), model.dispose()) };
  }
  // Rows padded after 100 to 121 tokens, as a classifier's batch of texts of different lengths.
  const mask = tf.tensor2d(Array.from({ length: SMALL.batchSize * SMALL.seqLen }, (_, i) => (i % SMALL.seqLen < 100 + 3 * Math.floor(i / SMALL.seqLen) ? 1 : 0)), [SMALL.batchSize, SMALL.seqLen], 'int32');
  const labels = tf.tensor1d(Array.from({ length: SMALL.batchSize }, (_, i) => i % 2), 'int32');
  return {
    model,
    lossFn: () => core.classificationLoss(model.forward(inputIds, { attentionMask: mask }), labels),
    dispose: () => (tf.dispose([inputIds, mask, labels]), model.dispose()),
  };
}
