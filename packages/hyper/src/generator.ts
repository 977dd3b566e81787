import * as tf from '@tensorflow/tfjs-core';
import { LayerNorm, layerIndexOf } from '@lora/core';
import { silu } from '@lora/core/internal';
import type { HyperLoraConfig } from './hyper-config.js';

/** One adapted layer as the generator sees it. */
export interface HyperTarget {
  /** Dotted module path of the target layer in the model, e.g. `transformer.h.0.attn.c_attn`. */
  readonly modulePath: string;
  /** Input width of the target layer (columns of A). */
  readonly inFeatures: number;
  /** Output width of the target layer (rows of B). */
  readonly outFeatures: number;
  /** Index into {@link TargetPlan.layers}. */
  readonly layer: number;
  /** Index into {@link TargetPlan.types}. */
  readonly type: number;
}

/** A module type: targets with the same name inside their layer and the same shape share one head. */
export interface ModuleType {
  /** The path after the layer index (e.g. `attn.c_attn`) or the last segment, with the shape appended (`c_attn[768x2304]`) when one name has several; keys its head's saved tensors (`head.<name>.*`). */
  readonly name: string;
  /** Input width shared by the type's targets. */
  readonly inFeatures: number;
  /** Output width shared by the type's targets. */
  readonly outFeatures: number;
}

/** The targets of one adapter, grouped into layers (rows of the layer embedding) and module types (heads). */
export interface TargetPlan {
  /** Every target, in the order given (model order); a target's position here is its target index. */
  readonly targets: readonly HyperTarget[];
  /** Layer labels (the layer index as text, or `-` for targets outside a layer list). */
  readonly layers: readonly string[];
  /** The module types, in order of first appearance; one generator head each. */
  readonly types: readonly ModuleType[];
}

/**
 * Group targets by layer index (PEFT's `layerIndexOf`) and module type (the path after the layer
 * index, e.g. `attn.c_attn`, or the last segment; the shape is appended when one name has two shapes).
 */
export function planTargets(
  targets: readonly (readonly [string, { readonly inFeatures: number; readonly outFeatures: number }])[],
  layersPattern: string | readonly string[] | null,
): TargetPlan {
  const rows = targets.map(([modulePath, base]) => {
    const layer = layerIndexOf(modulePath, layersPattern);
    let name = modulePath.slice(modulePath.lastIndexOf('.') + 1);
    if (layer !== null) {
      const match = new RegExp(`(?:^|\\.)${layer}\\.(.+)$`, 'u').exec(modulePath);
      if (match) name = match[1]!;
    }
    return { modulePath, inFeatures: base.inFeatures, outFeatures: base.outFeatures, layer, name };
  });
  const shapesByName = new Map<string, Set<string>>();
  for (const row of rows) {
    const shapes = shapesByName.get(row.name) ?? new Set<string>();
    shapes.add(`${row.inFeatures}x${row.outFeatures}`);
    shapesByName.set(row.name, shapes);
  }
  const typeName = (row: (typeof rows)[number]): string =>
    shapesByName.get(row.name)!.size > 1 ? `${row.name}[${row.inFeatures}x${row.outFeatures}]` : row.name;
  const layerIds = [...new Set(rows.map((row) => row.layer))].sort((a, b) => (a === null ? 1 : b === null ? -1 : a - b));
  const types: ModuleType[] = [];
  for (const row of rows) {
    const name = typeName(row);
    if (!types.some((type) => type.name === name)) types.push({ name, inFeatures: row.inFeatures, outFeatures: row.outFeatures });
  }
  return {
    layers: layerIds.map((id) => (id === null ? '-' : String(id))),
    types,
    targets: rows.map((row) => ({
      modulePath: row.modulePath,
      inFeatures: row.inFeatures,
      outFeatures: row.outFeatures,
      layer: layerIds.indexOf(row.layer),
      type: types.findIndex((type) => type.name === typeName(row)),
    })),
  };
}

/** The generator's parameter count, term by term (see {@link hyperParameterCount}). */
export interface HyperParameterCount {
  /** Condition encoder: Σ_f (V_f + 1)·e_f (discrete, null rows included) or size·dim + dim + 2·dim (continuous). */
  readonly condition: number;
  /** Position embeddings: L·d_ℓ + T·d_τ. */
  readonly positions: number;
  /** Trunk: 2m (input LayerNorm) + (m·H + H) + (k − 1)·(H² + H), with m = e + d_ℓ + d_τ. */
  readonly trunk: number;
  /**
   * Heads: `full` Σ_t (H + 1)·r·d_t; `basis` Σ_t [(H + 1)·2K + K·r·d_t];
   * `diag` Σ_t (H + 1)·r + Σ_targets r·d; with d = in + out.
   */
  readonly heads: number;
  /** condition + positions + trunk + heads: every parameter of the encoder and the generator. */
  readonly total: number;
  /** One plain LoRA of rank r on the same targets: Σ_targets r·d. */
  readonly oneLora: number;
  /** total / oneLora: how many per-condition LoRAs the HyperLoRA costs. */
  readonly breakEvenConditions: number;
}

/**
 * The documented parameter-count formula of a HyperLoRA generator (tested against the variables it
 * creates). Symbols: L layers, T module types, H trunk width, k trunk depth, K basis size, r rank,
 * e condition width, d_ℓ / d_τ layer / type embedding widths.
 */
export function hyperParameterCount(config: HyperLoraConfig, plan: TargetPlan): HyperParameterCount {
  const spec = config.condition;
  const condition =
    spec.kind === 'discrete' ? spec.factors.reduce((sum, factor) => sum + (factor.values.length + 1) * factor.dim, 0) : spec.size * spec.dim + spec.dim + 2 * spec.dim;
  const e = spec.kind === 'discrete' ? spec.factors.reduce((sum, factor) => sum + factor.dim, 0) : spec.dim;
  const m = e + config.layerEmbeddingDim + config.typeEmbeddingDim;
  const H = config.trunkWidth;
  const r = config.r;
  const K = config.basisSize;
  const positions = plan.layers.length * config.layerEmbeddingDim + plan.types.length * config.typeEmbeddingDim;
  const trunk = 2 * m + (m * H + H) + (config.trunkDepth - 1) * (H * H + H);
  const d = (item: { inFeatures: number; outFeatures: number }): number => item.inFeatures + item.outFeatures;
  const sumTypes = (fn: (type: ModuleType) => number): number => plan.types.reduce((sum, type) => sum + fn(type), 0);
  const oneLora = plan.targets.reduce((sum, target) => sum + r * d(target), 0);
  const heads =
    config.headMode === 'full'
      ? sumTypes((type) => (H + 1) * r * d(type))
      : config.headMode === 'basis'
        ? sumTypes((type) => (H + 1) * 2 * K + K * r * d(type))
        : sumTypes(() => (H + 1) * r) + oneLora;
  const total = condition + positions + trunk + heads;
  return { condition, positions, trunk, heads, total, oneLora, breakEvenConditions: total / oneLora };
}

/** The generated factors of one target for u conditions: A [u, r, in] and B [u, out, r] (any extra gain folded in). */
export interface GeneratedFactors {
  /** A [u, r, in], one per condition (in the order of the encoded conditions). */
  readonly a: tf.Tensor3D;
  /** B [u, out, r], one per condition; ΔW = s·B·A with the scaling s applied outside. */
  readonly b: tf.Tensor3D;
}

interface Head {
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;
  /** `basis`: K bases of A, [K, r·in], and of B, [K, out·r]. */
  readonly aBasis?: tf.Variable;
  readonly bBasis?: tf.Variable;
}

/**
 * The shared generator: trunk over `[condition ; layer embedding ; module-type embedding]` for every
 * (condition × target) row as one batched product, then one head per module type.
 *
 * Exact start: every head emits B = 0 for every condition at initialisation (`full`: zero head
 * weights, bias [vec(A₀); 0]; `basis`: zero B-bases; `diag`: learned B = 0), so the adapted model
 * equals the base model bit for bit while the B-producing parameters get non-zero gradients.
 */
export class HyperGenerator {
  /** The adapter's config (rank, head mode, trunk and embedding sizes). */
  readonly config: HyperLoraConfig;
  /** The targets, layers and module types the generator's embeddings and heads were built for. */
  readonly plan: TargetPlan;
  /** Trunk rows computed so far (u unique conditions × M targets per call). Tests read it. */
  rowsGenerated = 0;
  /** Generator calls so far. */
  runs = 0;
  private readonly layerEmbedding: tf.Variable;
  private readonly typeEmbedding: tf.Variable;
  private readonly norm: LayerNorm;
  private readonly trunk: { weight: tf.Variable; bias: tf.Variable }[] = [];
  private readonly heads: Head[] = [];
  /** `diag`: per-target A [r, in] and B [out, r]. */
  private readonly diagFactors: { a: tf.Variable; b: tf.Variable }[] = [];
  private readonly layerIndex: Int32Array;
  private readonly typeIndex: Int32Array;
  /** For each type, the target indices of that type in target order. */
  private readonly targetsByType: number[][];

  constructor(options: { config: HyperLoraConfig; plan: TargetPlan; conditionWidth: number; seed: number }) {
    const { config, plan, seed } = options;
    this.config = config;
    this.plan = plan;
    const r = config.r;
    const H = config.trunkWidth;
    const K = config.basisSize;
    let nextSeed = seed;
    const seedNext = (): number => nextSeed++;
    this.layerEmbedding = tf.tidy(() => tf.variable(tf.randomNormal([plan.layers.length, config.layerEmbeddingDim], 0, 1, 'float32', seedNext())));
    this.typeEmbedding = tf.tidy(() => tf.variable(tf.randomNormal([plan.types.length, config.typeEmbeddingDim], 0, 1, 'float32', seedNext())));
    const m = options.conditionWidth + config.layerEmbeddingDim + config.typeEmbeddingDim;
    this.norm = new LayerNorm({ dim: m });
    for (let i = 0; i < config.trunkDepth; i++) {
      const fanIn = i === 0 ? m : H;
      const bound = 1 / Math.sqrt(fanIn);
      this.trunk.push({
        weight: tf.tidy(() => tf.variable(tf.randomUniform([H, fanIn], -bound, bound, 'float32', seedNext()))),
        bias: tf.tidy(() => tf.variable(tf.zeros([H]))),
      });
    }
    for (const type of plan.types) {
      // A₀ as PEFT's kaiming_uniform_(a=√5) on [r, in]: U(−1/√in, 1/√in).
      const aBound = 1 / Math.sqrt(type.inFeatures);
      if (config.headMode === 'full') {
        const size = r * (type.inFeatures + type.outFeatures);
        this.heads.push({
          weight: tf.tidy(() => tf.variable(tf.zeros([size, H]))),
          bias: tf.tidy(() =>
            tf.variable(tf.concat([tf.randomUniform([r * type.inFeatures], -aBound, aBound, 'float32', seedNext()), tf.zeros([r * type.outFeatures])])),
          ),
        });
      } else if (config.headMode === 'basis') {
        // α_k = β_k = 1/√K at start, so A = Σ A_k/√K has the variance of one A₀ draw.
        this.heads.push({
          weight: tf.tidy(() => tf.variable(tf.zeros([2 * K, H]))),
          bias: tf.tidy(() => tf.variable(tf.fill([2 * K], 1 / Math.sqrt(K)))),
          aBasis: tf.tidy(() => tf.variable(tf.randomUniform([K, r * type.inFeatures], -aBound, aBound, 'float32', seedNext()))),
          bBasis: tf.tidy(() => tf.variable(tf.zeros([K, type.outFeatures * r]))),
        });
      } else {
        this.heads.push({ weight: tf.tidy(() => tf.variable(tf.zeros([r, H]))), bias: tf.tidy(() => tf.variable(tf.ones([r]))) });
      }
    }
    if (config.headMode === 'diag') {
      for (const target of plan.targets) {
        const bound = 1 / Math.sqrt(target.inFeatures);
        this.diagFactors.push({
          a: tf.tidy(() => tf.variable(tf.randomUniform([r, target.inFeatures], -bound, bound, 'float32', seedNext()))),
          b: tf.tidy(() => tf.variable(tf.zeros([target.outFeatures, r]))),
        });
      }
    }
    this.layerIndex = Int32Array.from(plan.targets.map((target) => target.layer));
    this.typeIndex = Int32Array.from(plan.targets.map((target) => target.type));
    this.targetsByType = plan.types.map((_, t) => plan.targets.flatMap((target, j) => (target.type === t ? [j] : [])));
  }

  /** The generator's variables under saved keys relative to the state prefix (`layer_embedding.weight`, `trunk.0.weight`, `head.<type>.weight`, …). */
  namedTensors(): [string, tf.Variable][] {
    const named: [string, tf.Variable][] = [
      ['layer_embedding.weight', this.layerEmbedding],
      ['type_embedding.weight', this.typeEmbedding],
      ...this.norm.namedParameters().map(([name, variable]) => [`trunk.norm.${name}`, variable] as [string, tf.Variable]),
    ];
    this.trunk.forEach((layer, i) => named.push([`trunk.${i}.weight`, layer.weight], [`trunk.${i}.bias`, layer.bias]));
    this.heads.forEach((head, t) => {
      const name = this.plan.types[t]!.name;
      named.push([`head.${name}.weight`, head.weight], [`head.${name}.bias`, head.bias]);
      if (head.aBasis && head.bBasis) named.push([`head.${name}.a_basis`, head.aBasis], [`head.${name}.b_basis`, head.bBasis]);
    });
    this.diagFactors.forEach((factors, j) => {
      const path = this.plan.targets[j]!.modulePath;
      named.push([`target.${path}.lora_A`, factors.a], [`target.${path}.lora_B`, factors.b]);
    });
    return named;
  }

  /**
   * The trunk output for u encoded conditions × the given targets: [u·n, H], row i·n + j for
   * condition i and the j-th listed target. Counts u·n rows.
   */
  private trunkRows(encoded: tf.Tensor2D, targetIndices: readonly number[]): tf.Tensor2D {
    const u = encoded.shape[0];
    const n = targetIndices.length;
    this.rowsGenerated += u * n;
    this.runs += 1;
    const conditionRows = new Int32Array(u * n);
    const layerRows = new Int32Array(u * n);
    const typeRows = new Int32Array(u * n);
    for (let i = 0; i < u; i++) {
      for (let j = 0; j < n; j++) {
        conditionRows[i * n + j] = i;
        layerRows[i * n + j] = this.layerIndex[targetIndices[j]!]!;
        typeRows[i * n + j] = this.typeIndex[targetIndices[j]!]!;
      }
    }
    let h: tf.Tensor = tf.concat(
      [
        tf.gather(encoded, tf.tensor1d(conditionRows, 'int32')),
        tf.gather(this.layerEmbedding, tf.tensor1d(layerRows, 'int32')),
        tf.gather(this.typeEmbedding, tf.tensor1d(typeRows, 'int32')),
      ],
      1,
    );
    h = this.norm.forward(h);
    for (const layer of this.trunk) h = silu(tf.add(tf.matMul(h, layer.weight as tf.Tensor2D, false, true), layer.bias));
    return h as tf.Tensor2D;
  }

  /**
   * Generate A and B of the listed targets (default all) for u encoded conditions [u, e]: the trunk
   * runs once on u·n rows, then one head per module type. Result `i` belongs to `targetIndices[i]`.
   * Call inside a tidy or gradient scope; the tensors are the caller's.
   */
  generate(encoded: tf.Tensor2D, targetIndices: readonly number[] = this.plan.targets.map((_, j) => j)): GeneratedFactors[] {
    const u = encoded.shape[0];
    const n = targetIndices.length;
    const h = this.trunkRows(encoded, targetIndices);
    const r = this.config.r;
    const result = new Array<GeneratedFactors>(n);
    for (let t = 0; t < this.plan.types.length; t++) {
      const positions = targetIndices.flatMap((target, j) => (this.typeIndex[target] === t ? [j] : []));
      if (positions.length === 0) continue;
      const type = this.plan.types[t]!;
      const head = this.heads[t]!;
      const count = positions.length;
      const rows = new Int32Array(u * count);
      for (let i = 0; i < u; i++) for (let p = 0; p < count; p++) rows[i * count + p] = i * n + positions[p]!;
      const hType = tf.gather(h, tf.tensor1d(rows, 'int32'));
      const out = tf.add(tf.matMul(hType, head.weight as tf.Tensor2D, false, true), head.bias) as tf.Tensor2D;
      const rIn = r * type.inFeatures;
      const outR = type.outFeatures * r;
      let aAll: tf.Tensor;
      let bAll: tf.Tensor;
      if (this.config.headMode === 'full') {
        aAll = tf.slice(out, [0, 0], [u * count, rIn]);
        bAll = tf.slice(out, [0, rIn], [u * count, outR]);
      } else if (this.config.headMode === 'basis') {
        const K = this.config.basisSize;
        aAll = tf.matMul(tf.slice(out, [0, 0], [u * count, K]), head.aBasis as tf.Tensor2D);
        bAll = tf.matMul(tf.slice(out, [0, K], [u * count, K]), head.bBasis as tf.Tensor2D);
      } else {
        aAll = out; // the diagonal s(c) [u·count, r]
        bAll = out;
      }
      const a4 = this.config.headMode === 'diag' ? null : tf.reshape(aAll, [u, count, r, type.inFeatures]);
      const b4 = this.config.headMode === 'diag' ? null : tf.reshape(bAll, [u, count, type.outFeatures, r]);
      const s3 = this.config.headMode === 'diag' ? tf.reshape(out, [u, count, r]) : null;
      positions.forEach((position, p) => {
        if (s3) {
          const factors = this.diagFactors[targetIndices[position]!]!;
          const s = tf.reshape(tf.slice(s3, [0, p, 0], [u, 1, r]), [u, r, 1]);
          result[position] = {
            a: tf.mul(s, tf.expandDims(factors.a, 0)) as tf.Tensor3D,
            b: tf.tile(tf.expandDims(factors.b, 0), [u, 1, 1]) as tf.Tensor3D,
          };
        } else {
          result[position] = {
            a: tf.reshape(tf.slice(a4!, [0, p, 0, 0], [u, 1, r, type.inFeatures]), [u, r, type.inFeatures]),
            b: tf.reshape(tf.slice(b4!, [0, p, 0, 0], [u, 1, type.outFeatures, r]), [u, type.outFeatures, r]),
          };
        }
      });
    }
    return result;
  }

  /**
   * The factors of every target for one encoded condition [1, e] in PEFT's layout, any extra gain
   * folded into B (`diag`: A = learned A, B = B·diag(s(c))): lora_A [r, in], lora_B [out, r].
   * Call inside a tidy; the tensors are the caller's.
   */
  exportFactors(encoded: tf.Tensor2D): {
    /** PEFT's `lora_A` [r, in] (`diag`: the target's learned A). */
    loraA: tf.Tensor2D;
    /** PEFT's `lora_B` [out, r], any extra gain folded in (`diag`: B·diag(s(c))); without the scaling s. */
    loraB: tf.Tensor2D;
  }[] {
    if (this.config.headMode !== 'diag') {
      return this.generate(encoded).map(({ a, b }) => ({ loraA: tf.squeeze(a, [0]) as tf.Tensor2D, loraB: tf.squeeze(b, [0]) as tf.Tensor2D }));
    }
    const all = this.plan.targets.map((_, j) => j);
    const h = this.trunkRows(encoded, all);
    return all.map((j) => {
      const head = this.heads[this.typeIndex[j]!]!;
      const s = tf.add(tf.matMul(tf.slice(h, [j, 0], [1, this.config.trunkWidth]), head.weight as tf.Tensor2D, false, true), head.bias);
      const factors = this.diagFactors[j]!;
      return { loraA: tf.clone(factors.a) as tf.Tensor2D, loraB: tf.mul(factors.b, s) as tf.Tensor2D };
    });
  }

  /** For each module type, the target indices of that type (in target order). */
  get typeGroups(): readonly (readonly number[])[] {
    return this.targetsByType;
  }

  /** Free every variable of the generator (embeddings, trunk, heads and per-target factors). */
  dispose(): void {
    for (const [, variable] of this.namedTensors()) variable.dispose();
  }
}
