import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseSafetensors } from '@lora/core';

/** Sizes that drive the training-memory estimate. */
export interface TrainingShape {
  /** Sequences per training step (`--batch-size`). */
  readonly batchSize: number;
  /** Tokens per sequence (`--context`). */
  readonly sequenceLength: number;
  /** LoRA rank. */
  readonly rank: number;
}

/** What is known about a model from its Hugging Face directory, without loading its weights. */
export interface ModelFootprint {
  /** Total elements of all tensors in the safetensors file(s), counted from their headers. */
  readonly parameters: number;
  /** Hidden width from `config.json` (`n_embd`, `hidden_size` or `d_model`; 0 when none is present). */
  readonly hiddenSize: number;
  /** Transformer blocks from `config.json` (`n_layer` or `num_hidden_layers`; 0 when neither is present). */
  readonly layers: number;
  /** `vocab_size` from `config.json` (0 when absent). */
  readonly vocabSize: number;
  /** Sum of in+out features of the layers LoRA would target, per layer. */
  readonly adaptedFeaturesPerLayer: number;
}

/** Float32 LoRA training memory, by component. */
export interface MemoryEstimate {
  /** Frozen base weights: 4 bytes per parameter. */
  readonly baseWeightsBytes: number;
  /** Adapter weights, their gradients and two AdamW moments: 16 bytes per adapter parameter. */
  readonly adapterStateBytes: number;
  /** Activations kept for backward for one batch: ~24 floats per token, layer and hidden unit, plus 3 per token and vocabulary entry (logits, their gradient). */
  readonly activationBytes: number;
  /** Sum of the three components, in bytes: what is compared with the available memory. */
  readonly totalBytes: number;
}

/** Format bytes as MiB/GiB with one decimal. */
export function formatBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/** Parse `--memory-budget`: plain bytes, or a number with KiB/MiB/GiB/KB/MB/GB (e.g. `6GiB`, `512MB`); null when it is not such a size or is under one byte. */
export function parseByteSize(text: string): number | null {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(b|kib|mib|gib|tib|kb|mb|gb|tb|k|m|g|t)?\s*$/iu.exec(text);
  if (!match) return null;
  const value = Number(match[1]);
  const unit = (match[2] ?? 'b').toLowerCase();
  const factors: Record<string, number> = {
    b: 1,
    k: 2 ** 10,
    kib: 2 ** 10,
    m: 2 ** 20,
    mib: 2 ** 20,
    g: 2 ** 30,
    gib: 2 ** 30,
    t: 2 ** 40,
    tib: 2 ** 40,
    kb: 1e3,
    mb: 1e6,
    gb: 1e9,
    tb: 1e12,
  };
  const bytes = Math.round(value * factors[unit]!);
  // No budget is zero bytes: a 0 would answer "memory limits extreme?" yes for any model.
  return bytes >= 1 ? bytes : null;
}

/**
 * Read a Hugging Face model directory's size: parameter count from the safetensors header(s)
 * (no weights are loaded) and the shape fields of `config.json`.
 */
export async function readModelFootprint(directory: string): Promise<ModelFootprint> {
  const config = JSON.parse(await fs.readFile(path.join(directory, 'config.json'), 'utf8')) as Record<string, unknown>;
  const number = (...keys: string[]): number => {
    for (const key of keys) if (typeof config[key] === 'number') return config[key] as number;
    return 0;
  };
  let parameters = 0;
  const files: string[] = [];
  try {
    const index = JSON.parse(await fs.readFile(path.join(directory, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    files.push(...new Set(Object.values(index.weight_map)));
  } catch {
    files.push('model.safetensors');
  }
  for (const file of files) {
    // Only the header is needed; reading the file whole is fine for the sizes this CLI trains on.
    const bytes = await fs.readFile(path.join(directory, file));
    const parsed = parseSafetensors(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    for (const entry of parsed.tensors.values()) parameters += entry.shape.reduce((a, b) => a * b, 1);
  }
  const hiddenSize = number('n_embd', 'hidden_size', 'd_model');
  return {
    parameters,
    hiddenSize,
    layers: number('n_layer', 'num_hidden_layers'),
    vocabSize: number('vocab_size'),
    // Attention in+out projections (GPT-2's c_attn 1→3 and c_proj 1→1): about 6·hidden per layer.
    adaptedFeaturesPerLayer: 6 * hiddenSize,
  };
}

/**
 * Estimate float32 LoRA training memory: frozen weights (4 bytes each), adapter weights with
 * their gradients and two AdamW moments (16 bytes each), and activations kept for backward
 * (about 24 floats per token per layer per hidden unit, plus the logits and their gradient).
 */
export function estimateLoraTrainingMemory(model: ModelFootprint, shape: TrainingShape): MemoryEstimate {
  const baseWeightsBytes = model.parameters * 4;
  const adapterParameters = model.layers * model.adaptedFeaturesPerLayer * shape.rank;
  const adapterStateBytes = adapterParameters * 16;
  const tokens = shape.batchSize * shape.sequenceLength;
  const activationBytes = tokens * (model.layers * model.hiddenSize * 24 + model.vocabSize * 3) * 4;
  return { baseWeightsBytes, adapterStateBytes, activationBytes, totalBytes: baseWeightsBytes + adapterStateBytes + activationBytes };
}

/** Memory available to this process: the budget if given, else the OS's free memory. */
export function availableMemory(budgetBytes: number | null): { bytes: number; source: string } {
  if (budgetBytes !== null) return { bytes: budgetBytes, source: '--memory-budget' };
  return { bytes: os.freemem(), source: 'free system memory' };
}

/** Whether compute is "substantial": a GPU backend, or at least 8 cores. */
export function judgeCompute(backend: { name: string; gpu: boolean }, cores = os.availableParallelism()): {
  /** True with a GPU backend, or with at least 8 CPU cores. */
  substantial: boolean;
  /** The reason, naming the backend and, without a GPU, the core count (e.g. `no GPU (backend "cpu"), 4 CPU cores < 8`). */
  detail: string;
} {
  if (backend.gpu) return { substantial: true, detail: `GPU backend "${backend.name}" present` };
  const substantial = cores >= 8;
  return {
    substantial,
    detail: `no GPU (backend "${backend.name}"), ${cores} CPU core${cores === 1 ? '' : 's'} ${substantial ? '>=' : '<'} 8`,
  };
}
