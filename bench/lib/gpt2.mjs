// The benchmark's model: @lora/models' GPT-2 (Hugging Face's GPT2LMHeadModel, with its
// parameter names, so LoRA targets match as on the real model), built from a config, plus
// deterministic batches.
import { models, tf } from './packages.mjs';

/** The benchmark's configurations. `small` is the standard one. */
export const CONFIGS = {
  small: { vocabSize: 257, nPositions: 128, nEmbd: 256, nLayer: 4, nHead: 4, batchSize: 8, seqLen: 128 },
  tiny: { vocabSize: 257, nPositions: 32, nEmbd: 64, nLayer: 2, nHead: 2, batchSize: 2, seqLen: 32 },
};

/** A GPT-2 (`GPT2LMHeadModel`, tied head, dropout off) of the named configuration, from @lora/models. */
export function createModel(configName = 'small', seed = 1) {
  const config = CONFIGS[configName];
  if (!config) throw new Error(`Unknown config "${configName}". Known: ${Object.keys(CONFIGS).join(', ')}.`);
  const model = models.createModel(
    {
      architectures: ['GPT2LMHeadModel'],
      model_type: 'gpt2',
      vocab_size: config.vocabSize,
      n_positions: config.nPositions,
      n_embd: config.nEmbd,
      n_layer: config.nLayer,
      n_head: config.nHead,
      attn_pdrop: 0,
      embd_pdrop: 0,
      resid_pdrop: 0,
    },
    { seed },
  );
  return model;
}

/** Deterministic byte-level batches: [{ inputIds }] with ids in [0, vocab). */
export function makeBatches(config, count, seed = 7) {
  let state = seed >>> 0;
  const next = () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state;
  };
  return Array.from({ length: count }, () => {
    const values = new Int32Array(config.batchSize * config.seqLen);
    // A learnable signal: mostly a repeating pattern, some noise.
    for (let i = 0; i < values.length; i++) values[i] = next() % 5 === 0 ? next() % config.vocabSize : (97 + (i % 26)) % config.vocabSize;
    return { inputIds: tf.tensor2d(values, [config.batchSize, config.seqLen], 'int32') };
  });
}

/** LoRA on the attention projections, r = 8, alpha = 16 (the `small` benchmark's adapter). */
export const LORA_CONFIG = { r: 8, loraAlpha: 16, targetModules: ['attn.c_attn', 'attn.c_proj'], fanInFanOut: true };
