// The script the check page runs in Chromium, bundled by esbuild for the browser. For one backend
// and one recipe it trains a tiny GPT-2's adapter a few steps, saves the adapter to bytes, loads
// the bytes into a fresh model and compares logits; the numbers go back to Node, which asserts.
// With `reads: 'async'` (for WebGPU) nothing is read synchronously: tfjs's webgpu backend reads
// synchronously through a canvas, and in headless Chromium's WebGPU on SwiftShader (the CPU) every
// asynchronous read after such a read fails (the device is lost), and one of more than about 800
// values returns zeros.
import * as tf from '@tensorflow/tfjs-core';
// Register tfjs's "webgpu" and "webgl" backends, as an app that wants them does; useBestBackend
// picks them up.
import '@tensorflow/tfjs-backend-webgpu';
import '@tensorflow/tfjs-backend-webgl';
import { adalora, adaLoraRankHistory } from '@lora/adalora';
import { AdapterModel, causalLmLoss, classificationLoss, createLoraRegistry, fastWasmKernels, loadAdapter, lora, serializeAdapter, serializeAdapterAsync, train } from '@lora/core';
import { hasSimdBatchMatMul, simdKernelBuild, spyOnKernels } from '@lora/core/internal';
import { formatBackendReport, useBestBackend, type BackendKind } from '@lora/cuda-backend';
import { dora } from '@lora/dora';
import { BertForSequenceClassification, generateAsync, Gpt2LMHeadModel, LlamaForCausalLM, parseBertConfig, parseGpt2Config, parseLlamaConfig, releaseCausalMasks } from '@lora/models';
import { hyper } from '@lora/hyper';
import { quant } from '@lora/quant';

/** What the page is asked to run. */
export interface CheckRequest {
  /** Backend to force; `auto` runs useBestBackend's own order and trains nothing. */
  readonly backend: BackendKind | 'auto';
  readonly recipes: readonly Recipe[];
  /**
   * `sync` (default): save with serializeAdapter and read logits with dataSync. `async`: train with a
   * seed (the same dropout masks on every backend, so losses compare across backends), save with
   * serializeAdapterAsync and read everything with `await data()`.
   */
  readonly reads?: 'sync' | 'async';
}

/**
 * An adapter recipe: LoRA, DoRA, QLoRA (4-bit NF4 base + LoRA), AdaLoRA (its ranks allocated during
 * the 4 steps), or HyperLoRA (a generator makes each row's adapter from its condition).
 */
export type Recipe = 'lora' | 'dora' | 'qlora' | 'adalora' | 'hyper';

/** One recipe's outcome. */
export interface RecipeResult {
  readonly recipe: Recipe;
  readonly losses: readonly number[];
  /** Bytes of the two saved files, by name. */
  readonly savedBytes: Readonly<Record<string, number>>;
  /** max |logits(trained) − logits(fresh model + reloaded adapter)|. */
  readonly reloadMaxAbsDiff: number;
  /** max |logits(trained) − logits(base alone)|: the adapter must have changed something. */
  readonly adapterEffect: number;
  /** Core's fused kernels (names starting `Lora`) that ran during training, sorted. */
  readonly fusedKernelsRun: readonly string[];
  /** AddN kernels run during training, and the most inputs one of them had. */
  readonly addNCalls: number;
  readonly maxAddNInputs: number;
  /** AdaLoRA: its rank allocator's phases over the steps and the ranks it kept in all (null for the other recipes). */
  readonly rankAllocation: { readonly phases: readonly string[]; readonly total: number } | null;
  readonly tensorsBefore: number;
  readonly tensorsAfter: number;
}

/** What the page reports for a request. */
export interface CheckResult {
  readonly backend: string;
  readonly report: string;
  /** Whether core's SIMD batched matMul runs on the backend (wasm only). */
  readonly simdMatMul: boolean;
  /** Which build of core's kernel module runs (null off WASM): `fma` where the browser accepts relaxed SIMD. */
  readonly kernelBuild: string | null;
  /** Core's fused kernels registered for the backend (gelu_new, LayerNorm, softmax, AdamW; wasm only). */
  readonly fusedKernels: readonly string[];
  readonly attempts: readonly { kind: string; outcome: string; reason?: string; message: string }[];
  readonly results: readonly RecipeResult[];
}

const CONFIG = parseGpt2Config({ vocab_size: 41, n_positions: 16, n_embd: 32, n_layer: 2, n_head: 2, attn_pdrop: 0, embd_pdrop: 0, resid_pdrop: 0 });
const STEPS = 4;

function tokens(seed: number): tf.Tensor2D {
  return tf.tidy(() => tf.cast(tf.floor(tf.randomUniform([2, 12], 0, CONFIG.vocabSize, 'float32', seed)), 'int32') as tf.Tensor2D);
}

function registry(): ReturnType<typeof createLoraRegistry> {
  return createLoraRegistry({ plugins: [lora({ seed: 3 }), dora({ seed: 3 }), adalora({ seed: 3 }), hyper({ seed: 3 }), quant()] });
}

const HYPER_CONDITION = {
  kind: 'discrete',
  factors: [
    { name: 'src', values: ['en', 'fr', 'de'], dim: 4 },
    { name: 'tgt', values: ['en', 'fr', 'de'], dim: 4 },
  ],
} as const;
/** The conditions of a batch's two rows (HyperLoRA; the other recipes take no adapter inputs). */
const CONDITIONS = [
  { src: 'en', tgt: 'fr' },
  { src: 'de', tgt: 'en' },
];

/** The recipe's logits for `ids`: HyperLoRA's with each row's condition. */
function logitsOf(recipe: Recipe, model: Gpt2LMHeadModel, ids: tf.Tensor2D): tf.Tensor {
  return model.forward(ids, recipe === 'hyper' ? { adapterInputs: { condition: CONDITIONS } } : {});
}

function adapterModel(recipe: Recipe): AdapterModel<Gpt2LMHeadModel> {
  // The same seed gives the same random base weights in both models.
  return AdapterModel.create(new Gpt2LMHeadModel(CONFIG, { seed: 11 }), {
    registry: registry(),
    plugin: recipe === 'qlora' ? 'lora' : recipe,
    transforms: recipe === 'qlora' ? ['quant'] : [],
    // Dropout on the adapters' input, so training runs core's fused dropout kernel too. AdaLoRA's
    // schedule over the 4 steps: warm-up (PEFT's steps 0, 1), a mask to the budget (2), the final
    // mask (3); the allocator reads the triplet scores at the last two.
    // HyperLoRA's condition dropout draws from its seeded generator.
    config:
      recipe === 'adalora'
        ? { initR: 4, targetR: 2, totalStep: STEPS, tinit: 1, tfinal: 1, deltaT: 1, loraAlpha: 8, loraDropout: 0.1, targetModules: ['c_attn', 'c_fc'] }
        : recipe === 'hyper'
          ? { r: 4, loraAlpha: 8, targetModules: ['c_attn', 'c_fc'], condition: HYPER_CONDITION, conditionDropout: 0.2 }
          : { r: 4, loraAlpha: 8, loraDropout: 0.1, targetModules: ['c_attn', 'c_fc'] },
  });
}

/** Core's fused kernels (names starting `Lora`) among a spy's calls, each once, sorted. */
function fusedKernelsOf(calls: readonly { readonly kernelName: string }[]): string[] {
  return [...new Set(calls.map((call) => call.kernelName).filter((kernelName) => kernelName.startsWith('Lora')))].sort();
}

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

async function maxAbsDiffAsync(a: tf.Tensor, b: tf.Tensor): Promise<number> {
  const difference = tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))));
  try {
    return (await difference.data())[0]!;
  } finally {
    difference.dispose();
  }
}

function rankAllocationOf(model: AdapterModel): RecipeResult['rankAllocation'] {
  const entries = adaLoraRankHistory(model)?.entries ?? [];
  return { phases: entries.map((entry) => entry.phase), total: entries.at(-1)?.total ?? -1 };
}

async function runRecipe(recipe: Recipe, reads: 'sync' | 'async'): Promise<RecipeResult> {
  const tensorsBefore = tf.memory().numTensors;
  const trained = adapterModel(recipe);
  const batches = [tokens(1), tokens(2)];
  const probe = tokens(3);
  try {
    trained.model.train();
    const spy = spyOnKernels();
    let losses: readonly number[];
    try {
      ({ losses } = await train({
        model: trained,
        trainData: batches.map((inputIds) => ({ inputIds })),
        steps: STEPS,
        learningRate: 2e-2,
        ...(reads === 'async' ? { seed: 5 } : {}),
        lossFn: (batch: { inputIds: tf.Tensor2D }) => tf.tidy(() => causalLmLoss(logitsOf(recipe, trained.model, batch.inputIds), batch.inputIds)),
      }));
    } finally {
      spy.stop();
    }
    const fusedKernelsRun = fusedKernelsOf(spy.calls);
    const addN = spy.calls.filter((call) => call.kernelName === 'AddN');
    trained.model.eval();
    const files = reads === 'async' ? await serializeAdapterAsync(trained) : serializeAdapter(trained);
    const fresh = adapterModel(recipe);
    // A new module starts in training mode (as in PyTorch): without this its dropout would be on.
    fresh.model.eval();
    fresh.deleteAdapter('default');
    try {
      await loadAdapter(fresh, { files, name: `${recipe} adapter bytes` });
      const expected = logitsOf(recipe, trained.model, probe);
      const reloaded = logitsOf(recipe, fresh.model, probe);
      const base = fresh.disableAdapters(() => logitsOf(recipe, fresh.model, probe));
      const difference = reads === 'async' ? maxAbsDiffAsync : async (a: tf.Tensor, b: tf.Tensor) => maxAbsDiff(a, b);
      const result = {
        recipe,
        losses: [...losses],
        savedBytes: Object.fromEntries([...files].map(([name, bytes]) => [name, bytes.byteLength])),
        reloadMaxAbsDiff: await difference(expected, reloaded),
        adapterEffect: await difference(expected, base),
        fusedKernelsRun,
        addNCalls: addN.length,
        maxAddNInputs: Math.max(0, ...addN.map((call) => Object.keys(call.inputShapes).length)),
        rankAllocation: recipe === 'adalora' ? rankAllocationOf(trained) : null,
      };
      tf.dispose([expected, reloaded, base]);
      fresh.dispose();
      trained.dispose();
      tf.dispose([...batches, probe]);
      // The attention keeps its causal masks between calls (by design); free them to count leaks.
      releaseCausalMasks();
      return { ...result, tensorsBefore, tensorsAfter: tf.memory().numTensors };
    } catch (error) {
      fresh.dispose();
      throw error;
    }
  } catch (error) {
    trained.dispose();
    tf.dispose([...batches, probe]);
    throw error;
  }
}

async function runCheck(request: CheckRequest): Promise<CheckResult> {
  const report = await useBestBackend({ ...(request.backend === 'auto' ? {} : { prefer: request.backend, fallback: false }), wasmPaths: '/wasm/' });
  const results: RecipeResult[] = [];
  for (const recipe of request.recipes) results.push(await runRecipe(recipe, request.reads ?? 'sync'));
  return {
    backend: tf.getBackend(),
    report: formatBackendReport(report),
    simdMatMul: hasSimdBatchMatMul(tf.backend()),
    kernelBuild: simdKernelBuild(tf.backend()),
    fusedKernels: fastWasmKernels(tf.getBackend()).filter((kernelName) => kernelName.startsWith('Lora')),
    attempts: report.attempts.map(({ kind, outcome, reason, message }) => ({ kind, outcome, ...(reason ? { reason } : {}), message })),
    results,
  };
}

/** Llama and BERT, which the recipes above (GPT-2) do not cover. */
export type Architecture = 'llama' | 'bert';

/** What the page reports for an {@link ArchitectureCheckRequest}. */
export interface ArchitectureCheckResult {
  readonly backend: string;
  /** Each architecture's losses over 4 seeded LoRA steps (read asynchronously). */
  readonly losses: Readonly<Record<Architecture, readonly number[]>>;
  /** Core's fused kernels (names starting `Lora`) each architecture's training ran, sorted. */
  readonly fusedKernelsRun: Readonly<Record<Architecture, readonly string[]>>;
  /** Greedy tokens from `generateAsync` on a sharpened seeded Llama (grouped-query attention, key/value cache), two prompts of different lengths. */
  readonly generated: readonly (readonly number[])[];
  readonly tensorsBefore: number;
  readonly tensorsAfter: number;
}

/** A request to train LoRA on a tiny Llama (causal LM) and a tiny BERT classifier on one backend. */
export interface ArchitectureCheckRequest {
  readonly backend: BackendKind;
}

// A tiny seeded model of the architecture, LoRA on its attention (and Llama's down_proj), the
// batch, and the loss; the same on every backend.
function architectureRun(architecture: Architecture): { model: AdapterModel; data: tf.Tensor[]; loss: () => tf.Scalar } {
  const registry = createLoraRegistry({ plugins: [lora({ seed: 3 })] });
  const ids = tf.tensor2d(Array.from({ length: 24 }, (_, i) => (i * 7) % 40), [2, 12], 'int32');
  if (architecture === 'llama') {
    const config = parseLlamaConfig({ vocab_size: 40, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 });
    const model = AdapterModel.create(new LlamaForCausalLM(config, { seed: 3 }), { registry, config: { r: 4, loraAlpha: 8, loraDropout: 0.1, targetModules: ['q_proj', 'v_proj', 'down_proj'] } });
    return { model, data: [ids], loss: () => causalLmLoss(model.model.forward(ids), ids) };
  }
  const config = parseBertConfig({ vocab_size: 40, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4, max_position_embeddings: 32, type_vocab_size: 2, num_labels: 3 });
  const model = AdapterModel.create(new BertForSequenceClassification(config, { seed: 3 }), { registry, config: { r: 4, loraAlpha: 8, targetModules: ['query', 'value'], modulesToSave: ['classifier'] } });
  // The second sequence padded after 9 tokens.
  const mask = tf.tensor2d(Array.from({ length: 24 }, (_, i) => (i < 12 || i % 12 < 9 ? 1 : 0)), [2, 12], 'int32');
  const labels = tf.tensor1d([1, 2], 'int32');
  return { model, data: [ids, mask, labels], loss: () => classificationLoss(model.model.forward(ids, { attentionMask: mask }), labels) };
}

async function runArchitectureCheck(request: ArchitectureCheckRequest): Promise<ArchitectureCheckResult> {
  await useBestBackend({ prefer: request.backend, fallback: false, wasmPaths: '/wasm/' });
  const tensorsBefore = tf.memory().numTensors;
  const losses = {} as Record<Architecture, readonly number[]>;
  const fusedKernelsRun = {} as Record<Architecture, readonly string[]>;
  for (const architecture of ['llama', 'bert'] as const) {
    const { model, data, loss } = architectureRun(architecture);
    const spy = spyOnKernels();
    try {
      model.model.train();
      // Seeded: the same dropout masks on every backend, so the losses compare across backends.
      ({ losses: losses[architecture] } = await train({ model, trainData: [0], steps: STEPS, learningRate: 2e-2, seed: 5, lossFn: () => tf.tidy(loss) }));
    } finally {
      spy.stop();
      model.dispose();
      tf.dispose(data);
    }
    fusedKernelsRun[architecture] = fusedKernelsOf(spy.calls);
  }
  // Generation reading each token's logits asynchronously: on webgpu nothing is read synchronously.
  // Prompts of two lengths, so each step passes Llama per-row positions, whose rotary tables a GPU
  // backend computes on the device. Weights scaled up so that greedy choices are far from ties and
  // compare across backends.
  const generator = new LlamaForCausalLM(parseLlamaConfig({ vocab_size: 40, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2 }), { seed: 7 });
  let generated: number[][];
  try {
    for (const [, variable] of generator.namedParameters()) tf.tidy(() => variable.assign(tf.mul(variable, 8)));
    generated = await generateAsync(generator, [[1, 7, 3], [5, 9]], { maxNewTokens: 8, eosTokenId: [] });
  } finally {
    generator.dispose();
  }
  releaseCausalMasks();
  return { backend: tf.getBackend(), losses, fusedKernelsRun, generated, tensorsBefore, tensorsAfter: tf.memory().numTensors };
}

(globalThis as { loraCheck?: typeof runCheck }).loraCheck = runCheck;
(globalThis as { loraArchitectureCheck?: typeof runArchitectureCheck }).loraArchitectureCheck = runArchitectureCheck;
