import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseSafetensors } from '@lora/core';

/** Sizes that drive the training-memory estimate. */
export interface TrainingShape {
  readonly batchSize: number;
  readonly sequenceLength: number;
  /** LoRA rank. */
  readonly rank: number;
}

/** What is known about a model from its Hugging Face directory, without loading its weights. */
export interface ModelFootprint {
  readonly parameters: number;
  readonly hiddenSize: number;
  readonly layers: number;
  readonly vocabSize: number;
  /** Sum of in+out features of the layers LoRA would target, per layer. */
  readonly adaptedFeaturesPerLayer: number;
}

/** Float32 LoRA training memory, by component. */
export interface MemoryEstimate {
  readonly baseWeightsBytes: number;
  readonly adapterStateBytes: number;
  readonly activationBytes: number;
  readonly totalBytes: number;
}

/** Format bytes as MiB/GiB with one decimal. */
export function formatBytes(bytes: number): string {
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/** Parse `--memory-budget`: plain bytes, or a number with KiB/MiB/GiB/KB/MB/GB (e.g. `6GiB`, `512MB`). */
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
  return Math.round(value * factors[unit]!);
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
export function judgeCompute(backend: { name: string; gpu: boolean }, cores = os.availableParallelism()): { substantial: boolean; detail: string } {
  if (backend.gpu) return { substantial: true, detail: `GPU backend "${backend.name}" present` };
  const substantial = cores >= 8;
  return {
    substantial,
    detail: `no GPU (backend "${backend.name}"), ${cores} CPU core${cores === 1 ? '' : 's'} ${substantial ? '>=' : '<'} 8`,
  };
}
