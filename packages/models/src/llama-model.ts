import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, Embedding, Linear, Module, ModuleList, RMSNorm, ShapeError, type TensorModule } from '@lora/core';
import { activationFunction } from './activations.js';
import { attentionBias, mergeHeads, rightPaddedLengths, scaledDotProductAttention, splitHeads, type KeyValueCache } from './attention.js';
import { PACKAGE } from './config-fields.js';
import { normalInit } from './initialization.js';
import { llamaConfigJson, type LlamaConfig } from './llama-config.js';
import { OutputHead } from './output-head.js';
import { CausalLanguageModel, PretrainedModel, type CausalLmForwardOptions, type LayerSlot } from './pretrained-model.js';
import { rotaryInverseFrequencies, rotaryTables, rotaryTablesOnDevice } from './rotary.js';
import { checkIdTensor } from './input-checks.js';
import { dropout } from '@lora/core';
import { causalAttention, hostReadIsCheap, rotaryEmbedding } from '@lora/core/internal';

/** Rotary cos/sin tables [B, T, 1, headDim / 2] for one forward pass, shared by every layer. */
interface RotaryContext {
  readonly cos: tf.Tensor;
  readonly sin: tf.Tensor;
}

/** Llama self-attention (`LlamaAttention`): rotary q/k, grouped-query attention, `o_proj`. */
export class LlamaAttention extends Module {
  /** Query projection hiddenSize → numAttentionHeads·headDim; a default LoRA target (an adapter may replace it). */
  q_proj: LayerSlot;
  /** Key projection hiddenSize → numKeyValueHeads·headDim (an adapter may replace it). */
  k_proj: LayerSlot;
  /** Value projection hiddenSize → numKeyValueHeads·headDim; a default LoRA target (an adapter may replace it). */
  v_proj: LayerSlot;
  /** Output projection numAttentionHeads·headDim → hiddenSize after the heads are merged (an adapter may replace it). */
  o_proj: LayerSlot;
  private readonly config: LlamaConfig;
  private readonly layerIndex: number;

  constructor(config: LlamaConfig, layerIndex: number) {
    super();
    this.config = config;
    this.layerIndex = layerIndex;
    const { hiddenSize, numAttentionHeads, numKeyValueHeads, headDim, attentionBias: bias } = config;
    this.q_proj = this.registerModule('q_proj', new Linear({ inFeatures: hiddenSize, outFeatures: numAttentionHeads * headDim, bias }));
    this.k_proj = this.registerModule('k_proj', new Linear({ inFeatures: hiddenSize, outFeatures: numKeyValueHeads * headDim, bias }));
    this.v_proj = this.registerModule('v_proj', new Linear({ inFeatures: hiddenSize, outFeatures: numKeyValueHeads * headDim, bias }));
    this.o_proj = this.registerModule('o_proj', new Linear({ inFeatures: numAttentionHeads * headDim, outFeatures: hiddenSize, bias }));
  }

  /**
   * Hidden states [B, T, hiddenSize] → attention output [B, T, hiddenSize]: rotary position embedding
   * on queries and keys (grouped-query heads shared as configured), the additive mask `bias` (null for
   * none), keys and values reused and appended when a `cache` is given; `keyLengths`, each sequence's
   * length where `bias` holds a right-padding mask (what it masks, for core's one kernel). The caller
   * disposes the result.
   */
  forward(hidden: tf.Tensor, bias: tf.Tensor | null, rotary: RotaryContext, cache?: KeyValueCache, keyLengths?: readonly number[] | null): tf.Tensor {
    return tf.tidy(() => {
      const { numAttentionHeads: heads, numKeyValueHeads: kvHeads, headDim, attentionDropout } = this.config;
      const [batch, time] = hidden.shape as [number, number];
      const scale = 1 / Math.sqrt(headDim);
      const dropoutActive = this.training && attentionDropout > 0;
      // Rotary (transformers' rotate_half form) in the projections' layout [B, T, heads, D] (reshapes,
      // no copies): each position's angles serve all its heads, and no head is split out for it.
      const rotated = (x: tf.Tensor, n: number): tf.Tensor => tf.reshape(rotaryEmbedding(tf.reshape(x, [batch, time, n, headDim]), rotary.cos, rotary.sin), [batch, time, n * headDim]);
      const q = rotated(this.q_proj.forward(hidden), heads);
      const k = rotated(this.k_proj.forward(hidden), kvHeads);
      const v = this.v_proj.forward(hidden);
      // The causal mask alone (or with right padding: `keyLengths`) and nothing cached: core's attention in one kernel each way where it has
      // one (WASM), reading q, k, v and writing its output in this layout (no transposes either way;
      // grouped key/value heads broadcast to their query heads), the attention dropout inside it (the
      // mask the separate dropout below would draw there). What the split heads below give, value
      // for value without grouping.
      const options = { heads, kvHeads, ...(dropoutActive ? { dropout: attentionDropout } : {}), ...(keyLengths ? { keyLengths } : {}) };
      const whole = cache === undefined && (bias?.rank === 2 || keyLengths) ? causalAttention(q, k, v, scale, options) : null;
      if (whole !== null) return this.o_proj.forward(whole);
      let keys: tf.Tensor = splitHeads(k, kvHeads);
      let values: tf.Tensor = splitHeads(v, kvHeads);
      if (cache) ({ key: keys, value: values } = cache.update(this.layerIndex, keys, values));
      const attended = scaledDotProductAttention(splitHeads(q, heads), keys, values, {
        scale,
        bias,
        causal: true,
        dropout: dropoutActive ? (p) => dropout(p, attentionDropout) : undefined,
      });
      return this.o_proj.forward(mergeHeads(attended));
    });
  }
}

/** Llama's SwiGLU feed-forward (`LlamaMLP`): down(act(gate(x)) · up(x)). */
export class LlamaMlp extends Module {
  /** Gate projection hiddenSize → intermediateSize, passed through `hiddenAct` (an adapter may replace it). */
  gate_proj: LayerSlot;
  /** Up projection hiddenSize → intermediateSize, multiplied by the activated gate (an adapter may replace it). */
  up_proj: LayerSlot;
  /** Down projection intermediateSize → hiddenSize (an adapter may replace it). */
  down_proj: LayerSlot;
  private readonly activation: (x: tf.Tensor) => tf.Tensor;

  constructor(config: LlamaConfig) {
    super();
    const { hiddenSize, intermediateSize, mlpBias: bias } = config;
    this.gate_proj = this.registerModule('gate_proj', new Linear({ inFeatures: hiddenSize, outFeatures: intermediateSize, bias }));
    this.up_proj = this.registerModule('up_proj', new Linear({ inFeatures: hiddenSize, outFeatures: intermediateSize, bias }));
    this.down_proj = this.registerModule('down_proj', new Linear({ inFeatures: intermediateSize, outFeatures: hiddenSize, bias }));
    this.activation = activationFunction(config.hiddenAct, 'hidden_act');
  }

  /** SwiGLU: `down_proj(act(gate_proj(h)) ⊙ up_proj(h))`, [B, T, hiddenSize] → [B, T, hiddenSize]. */
  forward(hidden: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.down_proj.forward(tf.mul(this.activation(this.gate_proj.forward(hidden)), this.up_proj.forward(hidden))));
  }
}

/** One pre-norm Llama layer (`LlamaDecoderLayer`). */
export class LlamaDecoderLayer extends Module {
  /** The layer's rotary, grouped-query self-attention. */
  readonly self_attn: LlamaAttention;
  /** The layer's SwiGLU feed-forward network. */
  readonly mlp: LlamaMlp;
  /** RMSNorm applied before `self_attn` (eps `rmsNormEps`). */
  input_layernorm: LayerSlot;
  /** RMSNorm applied before `mlp` (eps `rmsNormEps`). */
  post_attention_layernorm: LayerSlot;

  constructor(config: LlamaConfig, layerIndex: number) {
    super();
    this.self_attn = this.registerModule('self_attn', new LlamaAttention(config, layerIndex));
    this.mlp = this.registerModule('mlp', new LlamaMlp(config));
    this.input_layernorm = this.registerModule('input_layernorm', new RMSNorm({ dim: config.hiddenSize, eps: config.rmsNormEps }));
    this.post_attention_layernorm = this.registerModule('post_attention_layernorm', new RMSNorm({ dim: config.hiddenSize, eps: config.rmsNormEps }));
  }

  /**
   * One pre-norm decoder layer: `h + self_attn(input_layernorm(h))`, then `+ mlp(post_attention_layernorm(·))`.
   * Arguments as {@link LlamaAttention.forward}; the caller disposes the result.
   */
  forward(hidden: tf.Tensor, bias: tf.Tensor | null, rotary: RotaryContext, cache?: KeyValueCache, keyLengths?: readonly number[] | null): tf.Tensor {
    return tf.tidy(() => {
      const afterAttention = tf.add(hidden, this.self_attn.forward(this.input_layernorm.forward(hidden), bias, rotary, cache, keyLengths));
      return tf.add(afterAttention, this.mlp.forward(this.post_attention_layernorm.forward(afterAttention)));
    });
  }
}

/**
 * The Llama trunk (transformers' `LlamaModel`): token embedding, decoder layers with rotary
 * position embeddings, final RMSNorm. `forward` returns the last hidden state [B, T, hidden].
 */
export class LlamaModel extends PretrainedModel {
  readonly architecture = 'LlamaModel' as const;
  readonly modelType = 'llama';
  readonly defaultTargetModules: readonly string[] = ['q_proj', 'v_proj'];
  readonly outputHeadPaths: readonly string[] = ['lm_head'];
  readonly basePrefix = 'model';
  override readonly ignoredCheckpointKeys: readonly RegExp[] = [/(^|\.)rotary_emb\.inv_freq$/u];
  /** The hyper-parameters this trunk was built from. */
  readonly config: LlamaConfig;
  /** Token embedding [vocabSize, hiddenSize]; also the weight of `LlamaForCausalLM`'s `lm_head` when `tieWordEmbeddings`. */
  readonly embed_tokens: Embedding;
  /** The `numHiddenLayers` decoder layers, in order (`layers.0` … in checkpoint keys). */
  readonly layers: ModuleList<LlamaDecoderLayer>;
  /** Final RMSNorm on the last layer's output (eps `rmsNormEps`). */
  norm: LayerSlot;
  private readonly inverseFrequencies: Float64Array;

  /** A Llama trunk with transformers' initialisation N(0, 0.02). @param options.seed default 0. */
  constructor(config: LlamaConfig, options: { seed?: number } = {}) {
    super();
    this.config = config;
    this.embed_tokens = this.registerModule('embed_tokens', new Embedding({ numEmbeddings: config.vocabSize, embeddingDim: config.hiddenSize }));
    this.layers = this.registerModule('layers', new ModuleList(Array.from({ length: config.numHiddenLayers }, (_, i) => new LlamaDecoderLayer(config, i))));
    this.norm = this.registerModule('norm', new RMSNorm({ dim: config.hiddenSize, eps: config.rmsNormEps }));
    this.inverseFrequencies = rotaryInverseFrequencies(config);
    normalInit(this, { seed: options.seed ?? 0, std: () => 0.02 });
  }

  configJson(): Record<string, unknown> {
    return llamaConfigJson(this.config, this.architecture);
  }

  /** Last hidden state [B, T, hidden] for ids [B, T]. The caller disposes it. */
  forward(inputIds: tf.Tensor, options: CausalLmForwardOptions = {}): tf.Tensor {
    if (inputIds.rank !== 2) throw new ShapeError(`[${PACKAGE}] Llama inputIds`, [null, null], inputIds.shape);
    const [batch, time] = inputIds.shape as [number, number];
    options.cache?.check(this.config.numHiddenLayers, batch);
    checkIdTensor(inputIds, { name: 'inputIds', size: this.config.vocabSize, field: 'vocab_size' });
    const past = options.cache?.length ?? 0;
    let rotary: RotaryContext;
    if (options.positionIds) {
      const ids = options.positionIds;
      if (!((ids.rank === 2 && ids.shape[0] === batch && ids.shape[1] === time) || (ids.rank === 1 && ids.shape[0] === time))) {
        throw new ShapeError(`[${PACKAGE}] positionIds`, [batch, time], ids.shape);
      }
      if (ids.dtype === 'bool' || ids.dtype === 'string') {
        throw new ConfigError({ plugin: PACKAGE, field: 'positionIds', received: `a ${ids.dtype} tensor`, expected: 'a non-negative integer position (int32, or float32 holding integers)' });
      }
      if (hostReadIsCheap()) {
        const values = ids.dataSync();
        const bad = values.findIndex((value) => !(Number.isInteger(value) && value >= 0));
        if (bad >= 0) {
          // Rotary angles take any number: a fractional or negative position would silently rotate by the wrong angle.
          throw new ConfigError({
            plugin: PACKAGE,
            field: `positionIds${ids.rank === 2 ? `[${Math.floor(bad / time)}][${bad % time}]` : `[${bad}]`}`,
            received: values[bad],
            expected: 'a non-negative integer position (int32, or float32 holding integers)',
          });
        }
        rotary = rotaryTables(this.inverseFrequencies, ids.rank === 2 ? values : Array.from({ length: batch * time }, (_, i) => values[i % time]!), batch, time);
      } else {
        // A GPU backend: the tables from the positions where they lie (a read would stall the device); unchecked there, as token ids are.
        rotary = rotaryTablesOnDevice(this.inverseFrequencies, ids, batch, time);
      }
    } else {
      rotary = rotaryTables(this.inverseFrequencies, Array.from({ length: batch * time }, (_, i) => past + (i % time)), batch, time);
    }
    let bias: tf.Tensor | null = null;
    try {
      // Inside the try: a bad attentionMask throws here, and the rotary tables must still be freed.
      bias = attentionBias({ queries: time, past, causal: true, attentionMask: options.attentionMask, batch });
      // A right-padded batch (nothing cached): the lengths core's one-kernel attention takes for it.
      const keyLengths = options.cache === undefined ? rightPaddedLengths(options.attentionMask) : null;
      return tf.tidy(() => {
        let hidden = this.embed_tokens.forward(inputIds);
        for (const layer of this.layers) hidden = layer.forward(hidden, bias, rotary, options.cache, keyLengths);
        return this.norm.forward(hidden);
      });
    } finally {
      bias?.dispose();
      rotary.cos.dispose();
      rotary.sin.dispose();
    }
  }
}

/**
 * Llama with its language-model head (transformers' `LlamaForCausalLM`): RMSNorm, rotary
 * embeddings, grouped-query attention (`num_key_value_heads` < `num_attention_heads`), SwiGLU MLP,
 * and `lm_head` tied to `model.embed_tokens` when `tie_word_embeddings` is true.
 *
 * @example
 * const model = new LlamaForCausalLM(parseLlamaConfig({ vocab_size: 100, hidden_size: 32, intermediate_size: 64,
 *   num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 }));
 * const logits = tf.tidy(() => model.forward(tf.tensor2d([[1, 5, 9]], undefined, 'int32'))); // [1, 3, 100]
 */
export class LlamaForCausalLM extends CausalLanguageModel {
  readonly architecture = 'LlamaForCausalLM' as const;
  readonly modelType = 'llama';
  readonly defaultTargetModules: readonly string[] = ['q_proj', 'v_proj'];
  readonly outputHeadPaths: readonly string[] = ['lm_head'];
  readonly basePrefix = 'model';
  override readonly ignoredCheckpointKeys: readonly RegExp[] = [/(^|\.)rotary_emb\.inv_freq$/u];
  override readonly tiedCheckpointKeys: readonly string[];
  /** The hyper-parameters this model was built from. */
  readonly config: LlamaConfig;
  /** The Llama trunk (checkpoint prefix `model.`). */
  readonly model: LlamaModel;
  /** Projection to vocabulary logits (an `OutputHead`, weight [vocabSize, hiddenSize]) sharing `model.embed_tokens`'s weight when `tieWordEmbeddings`. */
  lm_head: LayerSlot;

  /** @param options.seed seed of the initialisation (default 0). */
  constructor(config: LlamaConfig, options: { seed?: number } = {}) {
    super();
    this.config = config;
    this.model = this.registerModule('model', new LlamaModel(config, options));
    this.lm_head = this.registerModule(
      'lm_head',
      new OutputHead({
        inFeatures: config.hiddenSize,
        outFeatures: config.vocabSize,
        tiedWeight: config.tieWordEmbeddings ? this.model.embed_tokens.weight : undefined,
        seed: (options.seed ?? 0) + 7919,
      }),
    );
    this.tiedCheckpointKeys = config.tieWordEmbeddings ? ['lm_head.weight'] : [];
  }

  get vocabSize(): number {
    return this.config.vocabSize;
  }

  get numLayers(): number {
    return this.config.numHiddenLayers;
  }

  get maxPositions(): null {
    return null;
  }

  get eosTokenIds(): readonly number[] {
    return this.config.eosTokenIds;
  }

  configJson(): Record<string, unknown> {
    return llamaConfigJson(this.config, this.architecture);
  }

  forward(inputIds: tf.Tensor, options: CausalLmForwardOptions = {}): tf.Tensor {
    return this.withAdapterInputs(options.adapterInputs, () => tf.tidy(() => (this.lm_head as TensorModule).forward(this.model.forward(inputIds, options))));
  }
}
