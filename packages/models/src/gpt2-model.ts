import * as tf from '@tensorflow/tfjs-core';
import { Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, ShapeError, type TensorModule } from '@lora/core';
import { causalSelfAttention } from '@lora/core/internal';
import { activationFunction } from './activations.js';
import { attentionBias, mergeHeads, rightPaddedLengths, scaledDotProductAttention, splitHeads, type KeyValueCache } from './attention.js';
import { PACKAGE } from './config-fields.js';
import { gpt2ConfigJson, type Gpt2Config } from './gpt2-config.js';
import { normalInit } from './initialization.js';
import { OutputHead } from './output-head.js';
import { CausalLanguageModel, PretrainedModel, type CausalLmForwardOptions, type LayerSlot } from './pretrained-model.js';
import { positionIdsFor } from './positions.js';
import { checkIdTensor } from './input-checks.js';

/** GPT-2 self-attention (`GPT2Attention`): fused `c_attn` Conv1D for q, k, v, then `c_proj`. */
export class Gpt2Attention extends Module {
  /** Fused q, k, v projection, Conv1D layout: weight [nEmbd, 3·nEmbd]; the default LoRA target (an adapter may replace it). */
  c_attn: LayerSlot;
  /** Output projection [nEmbd, nEmbd] after the heads are merged, Conv1D layout (an adapter may replace it). */
  c_proj: LayerSlot;
  /** Dropout on the attention probabilities, rate `attnPdrop` (training only). */
  readonly attn_dropout: Dropout;
  /** Dropout on the output of `c_proj`, rate `residPdrop` (training only). */
  readonly resid_dropout: Dropout;
  private readonly config: Gpt2Config;
  private readonly layerIndex: number;

  constructor(config: Gpt2Config, layerIndex: number) {
    super();
    this.config = config;
    this.layerIndex = layerIndex;
    this.c_attn = this.registerModule('c_attn', new Linear({ inFeatures: config.nEmbd, outFeatures: 3 * config.nEmbd, fanInFanOut: true }));
    this.c_proj = this.registerModule('c_proj', new Linear({ inFeatures: config.nEmbd, outFeatures: config.nEmbd, fanInFanOut: true }));
    this.attn_dropout = this.registerModule('attn_dropout', new Dropout(config.attnPdrop));
    this.resid_dropout = this.registerModule('resid_dropout', new Dropout(config.residPdrop));
  }

  /**
   * Hidden states [B, T, nEmbd] → attention output [B, T, nEmbd]. `keyLengths`: each sequence's
   * length where `bias` holds a right-padding mask (what it masks, for core's one kernel).
   */
  forward(hidden: tf.Tensor, bias: tf.Tensor | null, cache?: KeyValueCache, keyLengths?: readonly number[] | null): tf.Tensor {
    return tf.tidy(() => {
      const { nEmbd, nHead } = this.config;
      const qkv = this.c_attn.forward(hidden);
      let scale = this.config.scaleAttnWeights ? 1 / Math.sqrt(nEmbd / nHead) : 1;
      if (this.config.scaleAttnByInverseLayerIdx) scale /= this.layerIndex + 1;
      // Causal attention without a cache, the causal mask alone or with right padding: read straight
      // from qkv and written with the heads merged, where core has that kernel (WASM). Its attention
      // dropout drops the probabilities inside the kernel with the mask attn_dropout would draw there.
      const dropout = this.training && this.config.attnPdrop > 0;
      const options = { ...(dropout ? { dropout: this.attn_dropout.p } : {}), ...(keyLengths ? { keyLengths } : {}) };
      const whole = cache === undefined && (bias?.rank === 2 || keyLengths) ? causalSelfAttention(qkv, nHead, scale, options) : null;
      if (whole !== null) return this.resid_dropout.forward(this.c_proj.forward(whole));
      const [q, k, v] = tf.split(qkv, [nEmbd, nEmbd, nEmbd], -1) as [tf.Tensor, tf.Tensor, tf.Tensor];
      let keys = splitHeads(k, nHead) as tf.Tensor;
      let values = splitHeads(v, nHead) as tf.Tensor;
      if (cache) ({ key: keys, value: values } = cache.update(this.layerIndex, keys, values));
      const attended = scaledDotProductAttention(splitHeads(q, nHead), keys, values, {
        scale,
        bias,
        causal: true,
        dropout: dropout ? (p) => this.attn_dropout.forward(p) : undefined,
      });
      return this.resid_dropout.forward(this.c_proj.forward(mergeHeads(attended)));
    });
  }
}

/** GPT-2 feed-forward block (`GPT2MLP`): `c_fc` → activation → `c_proj` → dropout. */
export class Gpt2Mlp extends Module {
  /** Up projection nEmbd → nInner, Conv1D layout (an adapter may replace it). */
  c_fc: LayerSlot;
  /** Down projection nInner → nEmbd, Conv1D layout (an adapter may replace it). */
  c_proj: LayerSlot;
  /** Dropout on the MLP output, rate `residPdrop` (training only). */
  readonly dropout: Dropout;
  private readonly activation: (x: tf.Tensor) => tf.Tensor;

  constructor(config: Gpt2Config) {
    super();
    this.c_fc = this.registerModule('c_fc', new Linear({ inFeatures: config.nEmbd, outFeatures: config.nInner, fanInFanOut: true }));
    this.c_proj = this.registerModule('c_proj', new Linear({ inFeatures: config.nInner, outFeatures: config.nEmbd, fanInFanOut: true }));
    this.dropout = this.registerModule('dropout', new Dropout(config.residPdrop));
    this.activation = activationFunction(config.activationFunction, 'activation_function');
  }

  /** Hidden states [B, T, nEmbd] → `c_proj(activation(c_fc(hidden)))` with residual dropout, [B, T, nEmbd]. */
  forward(hidden: tf.Tensor): tf.Tensor {
    return tf.tidy(() => this.dropout.forward(this.c_proj.forward(this.activation(this.c_fc.forward(hidden)))));
  }
}

/** One pre-norm GPT-2 layer (`GPT2Block`). */
export class Gpt2Block extends Module {
  /** LayerNorm applied before `attn` (eps `layerNormEpsilon`). */
  ln_1: LayerSlot;
  /** The block's self-attention. */
  readonly attn: Gpt2Attention;
  /** LayerNorm applied before `mlp` (eps `layerNormEpsilon`). */
  ln_2: LayerSlot;
  /** The block's feed-forward network. */
  readonly mlp: Gpt2Mlp;

  constructor(config: Gpt2Config, layerIndex: number) {
    super();
    this.ln_1 = this.registerModule('ln_1', new LayerNorm({ dim: config.nEmbd, eps: config.layerNormEpsilon }));
    this.attn = this.registerModule('attn', new Gpt2Attention(config, layerIndex));
    this.ln_2 = this.registerModule('ln_2', new LayerNorm({ dim: config.nEmbd, eps: config.layerNormEpsilon }));
    this.mlp = this.registerModule('mlp', new Gpt2Mlp(config));
  }

  /**
   * Hidden states [B, T, nEmbd] → the block output: `h + attn(ln_1(h))`, then `+ mlp(ln_2(·))`.
   * `bias` is the additive attention mask (null for none); with `cache`, keys and values of earlier
   * positions are reused and this step's appended; `keyLengths` as {@link Gpt2Attention.forward}'s.
   * The caller disposes the result.
   */
  forward(hidden: tf.Tensor, bias: tf.Tensor | null, cache?: KeyValueCache, keyLengths?: readonly number[] | null): tf.Tensor {
    return tf.tidy(() => {
      const afterAttention = tf.add(hidden, this.attn.forward(this.ln_1.forward(hidden), bias, cache, keyLengths));
      return tf.add(afterAttention, this.mlp.forward(this.ln_2.forward(afterAttention)));
    });
  }
}

/**
 * The GPT-2 trunk (transformers' `GPT2Model`): token and learned position embeddings, `nLayer`
 * blocks, final LayerNorm. `forward` returns the last hidden state [B, T, nEmbd] (after `ln_f`).
 */
export class Gpt2Model extends PretrainedModel {
  readonly architecture = 'GPT2Model' as const;
  readonly modelType = 'gpt2';
  readonly defaultTargetModules: readonly string[] = ['c_attn'];
  readonly outputHeadPaths: readonly string[] = ['lm_head'];
  readonly basePrefix = 'transformer';
  override readonly ignoredCheckpointKeys: readonly RegExp[] = [/(^|\.)h\.\d+\.attn\.(bias|masked_bias)$/u];
  /** The hyper-parameters this trunk was built from. */
  readonly config: Gpt2Config;
  /** Token embedding [vocabSize, nEmbd]; also the weight of `Gpt2LMHeadModel`'s `lm_head` when `tieWordEmbeddings`. */
  readonly wte: Embedding;
  /** Learned position embedding [nPositions, nEmbd]. */
  readonly wpe: Embedding;
  /** Dropout on the summed embeddings, rate `embdPdrop` (training only). */
  readonly drop: Dropout;
  /** The `nLayer` blocks, in order (`h.0` … in checkpoint keys). */
  readonly h: ModuleList<Gpt2Block>;
  /** Final LayerNorm on the last block's output (eps `layerNormEpsilon`). */
  ln_f: LayerSlot;

  /**
   * A GPT-2 trunk with transformers' initialisation (N(0, 0.02), `c_proj` scaled by 1/√(2·nLayer)).
   * @param options.seed seed of the initialisation (default 0).
   */
  constructor(config: Gpt2Config, options: { seed?: number } = {}) {
    super();
    this.config = config;
    this.wte = this.registerModule('wte', new Embedding({ numEmbeddings: config.vocabSize, embeddingDim: config.nEmbd }));
    this.wpe = this.registerModule('wpe', new Embedding({ numEmbeddings: config.nPositions, embeddingDim: config.nEmbd }));
    this.drop = this.registerModule('drop', new Dropout(config.embdPdrop));
    this.h = this.registerModule('h', new ModuleList(Array.from({ length: config.nLayer }, (_, i) => new Gpt2Block(config, i))));
    this.ln_f = this.registerModule('ln_f', new LayerNorm({ dim: config.nEmbd, eps: config.layerNormEpsilon }));
    normalInit(this, {
      seed: options.seed ?? 0,
      std: (path) => (/\.c_proj\.weight$/u.test(path) ? 0.02 / Math.sqrt(2 * config.nLayer) : 0.02),
    });
  }

  configJson(): Record<string, unknown> {
    return gpt2ConfigJson(this.config, this.architecture);
  }

  /** Last hidden state [B, T, nEmbd] for ids [B, T]. The caller disposes it. */
  forward(inputIds: tf.Tensor, options: CausalLmForwardOptions = {}): tf.Tensor {
    if (inputIds.rank !== 2) throw new ShapeError(`[${PACKAGE}] GPT-2 inputIds`, [null, null], inputIds.shape);
    const [batch, time] = inputIds.shape as [number, number];
    options.cache?.check(this.config.nLayer, batch);
    checkIdTensor(inputIds, { name: 'inputIds', size: this.config.vocabSize, field: 'vocab_size' });
    if (options.positionIds) checkIdTensor(options.positionIds, { name: 'positionIds', size: this.config.nPositions, field: 'n_positions' });
    const past = options.cache?.length ?? 0;
    if (past + time > this.config.nPositions) {
      throw new ShapeError(`[${PACKAGE}] GPT-2 sequence (cached + new positions) longer than n_positions`, [null, this.config.nPositions], [batch, past + time]);
    }
    const bias = attentionBias({ queries: time, past, causal: true, attentionMask: options.attentionMask, batch });
    // A right-padded batch (nothing cached): the lengths core's one-kernel attention takes for it.
    const keyLengths = options.cache === undefined ? rightPaddedLengths(options.attentionMask) : null;
    try {
      return tf.tidy(() => {
        const positions = positionIdsFor(options.positionIds, batch, time, past);
        let hidden = tf.add(this.wte.forward(inputIds), this.wpe.forward(positions));
        hidden = this.drop.forward(hidden);
        for (const block of this.h) hidden = block.forward(hidden, bias, options.cache, keyLengths);
        return this.ln_f.forward(hidden);
      });
    } finally {
      bias?.dispose();
    }
  }
}

/**
 * GPT-2 with its language-model head (transformers' `GPT2LMHeadModel`). Parameter names match
 * transformers' state dict (`transformer.h.0.attn.c_attn.weight`, Conv1D weights [in, out]); the
 * head `lm_head` shares `transformer.wte.weight` unless `tie_word_embeddings` is false.
 *
 * @example
 * const model = new Gpt2LMHeadModel(parseGpt2Config({ vocab_size: 257, n_embd: 64, n_layer: 2, n_head: 4 }));
 * model.eval();
 * const logits = tf.tidy(() => model.forward(tf.tensor2d([[1, 2, 3]], undefined, 'int32'))); // [1, 3, 257]
 */
export class Gpt2LMHeadModel extends CausalLanguageModel {
  readonly architecture = 'GPT2LMHeadModel' as const;
  readonly modelType = 'gpt2';
  readonly defaultTargetModules: readonly string[] = ['c_attn'];
  readonly outputHeadPaths: readonly string[] = ['lm_head'];
  readonly basePrefix = 'transformer';
  override readonly ignoredCheckpointKeys: readonly RegExp[] = [/(^|\.)h\.\d+\.attn\.(bias|masked_bias)$/u];
  override readonly tiedCheckpointKeys: readonly string[];
  /** The hyper-parameters this model was built from. */
  readonly config: Gpt2Config;
  /** The GPT-2 trunk (checkpoint prefix `transformer.`). */
  readonly transformer: Gpt2Model;
  /** Projection to vocabulary logits (an `OutputHead`, weight [vocabSize, nEmbd]) sharing `transformer.wte`'s weight when `tieWordEmbeddings`. */
  lm_head: LayerSlot;

  /** @param options.seed seed of the initialisation (default 0). */
  constructor(config: Gpt2Config, options: { seed?: number } = {}) {
    super();
    this.config = config;
    this.transformer = this.registerModule('transformer', new Gpt2Model(config, options));
    this.lm_head = this.registerModule(
      'lm_head',
      new OutputHead({
        inFeatures: config.nEmbd,
        outFeatures: config.vocabSize,
        tiedWeight: config.tieWordEmbeddings ? this.transformer.wte.weight : undefined,
        seed: (options.seed ?? 0) + 7919,
      }),
    );
    this.tiedCheckpointKeys = config.tieWordEmbeddings ? ['lm_head.weight'] : [];
  }

  get vocabSize(): number {
    return this.config.vocabSize;
  }

  get numLayers(): number {
    return this.config.nLayer;
  }

  get maxPositions(): number {
    return this.config.nPositions;
  }

  get eosTokenIds(): readonly number[] {
    return this.config.eosTokenIds;
  }

  configJson(): Record<string, unknown> {
    return gpt2ConfigJson(this.config, this.architecture);
  }

  forward(inputIds: tf.Tensor, options: CausalLmForwardOptions = {}): tf.Tensor {
    return this.withAdapterInputs(options.adapterInputs, () => tf.tidy(() => (this.lm_head as TensorModule).forward(this.transformer.forward(inputIds, options))));
  }
}
