// A toy adapter plugin written the way a third party would: it imports only @lora/core's public API
// and is found by the registry, saving/loading, `lora inspect` and `lora forward` through its
// descriptor alone. Math: a rank-1 update ΔW = g·s·u·vᵀ per target, where u [out] and v [in] are the
// layer's variables, s is one adapter-level variable shared by every layer (saved once), and g is a
// per-forward input `toyGain` (one number per batch row; default 1, required with `requireGain`).
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError, LoraError, PLUGIN_SPECIFICATION_VERSION, definePluginPackage } from '@lora/core';

const FIELDS = ['targetModules', 'excludeModules', 'layersToTransform', 'layersPattern', 'modulesToSave', 'bias', 'taskType', 'baseModelNameOrPath', 'inferenceMode', 'requireGain'];

/** @param {Record<string, unknown>} options */
function parseToyConfig(options) {
  if (options === null || typeof options !== 'object') throw new ConfigError({ plugin: 'toy', field: '(config)', received: options, expected: 'an object' });
  for (const key of Object.keys(options)) {
    if (!FIELDS.includes(key) && key !== 'extraPeftFields') throw new ConfigError({ plugin: 'toy', field: key, received: options[key], expected: `one of ${FIELDS.join(', ')}` });
  }
  const targetModules = options.targetModules ?? null;
  if (targetModules !== null && typeof targetModules !== 'string' && !Array.isArray(targetModules)) {
    throw new ConfigError({ plugin: 'toy', field: 'targetModules', received: targetModules, expected: 'a list of names or a regex string' });
  }
  if (options.requireGain !== undefined && typeof options.requireGain !== 'boolean') {
    throw new ConfigError({ plugin: 'toy', field: 'requireGain', received: options.requireGain, expected: 'a boolean' });
  }
  return {
    targetModules,
    excludeModules: options.excludeModules ?? null,
    layersToTransform: options.layersToTransform ?? null,
    layersPattern: options.layersPattern ?? null,
    modulesToSave: options.modulesToSave ?? null,
    bias: options.bias ?? 'none',
    taskType: options.taskType ?? null,
    baseModelNameOrPath: options.baseModelNameOrPath ?? null,
    inferenceMode: options.inferenceMode ?? false,
    requireGain: options.requireGain ?? false,
    extraPeftFields: {},
  };
}

/** The gain column [batch, 1, …] for `input`, from `inputs.toyGain` (a number or one per row). */
function gainFor(input, inputs, config) {
  const gain = Object.hasOwn(inputs, 'toyGain') ? inputs.toyGain : undefined;
  if (gain === undefined) {
    if (config.requireGain) throw new LoraError('[toy] This adapter needs the per-forward input toyGain: pass adapterInputs: { toyGain: [one number per row] }.', { plugin: 'toy' });
    return null;
  }
  const rows = Array.isArray(gain) ? gain : [gain];
  if (!rows.every((value) => typeof value === 'number' && Number.isFinite(value)) || (rows.length !== 1 && rows.length !== input.shape[0])) {
    throw new LoraError(`[toy] toyGain must be a finite number or one per batch row (${input.shape[0]}), got ${JSON.stringify(gain)}.`, { plugin: 'toy' });
  }
  const shape = [rows.length, ...input.shape.slice(1, -1).map(() => 1), 1];
  return tf.tensor(rows, shape);
}

class ToyState {
  constructor() {
    this.shared = tf.tidy(() => tf.variable(tf.ones([1])));
  }
  namedTensors() {
    return [['toy.shared_scale', this.shared]];
  }
  dispose() {
    this.shared.dispose();
  }
}

class ToyAdapter {
  constructor({ inFeatures, outFeatures, config, state, seed }) {
    this.config = config;
    this.state = state;
    // u starts at zero, so a new adapter leaves the model's output unchanged (as LoRA's B does).
    this.u = tf.tidy(() => tf.variable(tf.zeros([outFeatures])));
    this.v = tf.tidy(() => tf.variable(tf.randomUniform([inFeatures], -1, 1, 'float32', seed)));
  }
  namedTensors() {
    return [
      ['toy_u', this.u],
      ['toy_v', this.v],
    ];
  }
  apply(input, result, context) {
    return tf.tidy(() => {
      // (x·v) u s: a rank-1 product, never forming ΔW.
      const projected = tf.mul(tf.expandDims(tf.sum(tf.mul(input, this.v), -1), -1), tf.mul(this.u, this.state.shared));
      const gain = gainFor(input, context.inputs, this.config);
      return tf.add(result, gain ? tf.mul(projected, gain) : projected);
    });
  }
  deltaWeight() {
    return tf.tidy(() => tf.mul(tf.outerProduct(this.u, this.v), this.state.shared));
  }
  dispose() {
    this.u.dispose();
    this.v.dispose();
  }
}

/** The toy adapter plugin (`peft_type: "TOY"`). */
export function toy(options = {}) {
  return {
    specificationVersion: PLUGIN_SPECIFICATION_VERSION,
    kind: 'adapter',
    name: 'toy',
    packageName: '@lora-internal/toy-plugin',
    peftType: 'TOY',
    parseConfig: parseToyConfig,
    fromPeftJson(json) {
      return parseToyConfig({
        targetModules: json.target_modules,
        bias: json.bias,
        taskType: json.task_type,
        inferenceMode: json.inference_mode,
        requireGain: json.require_gain,
        baseModelNameOrPath: json.base_model_name_or_path,
      });
    },
    toPeftJson(config) {
      return {
        peft_type: 'TOY',
        target_modules: config.targetModules,
        bias: config.bias,
        task_type: config.taskType,
        inference_mode: config.inferenceMode,
        require_gain: config.requireGain,
        base_model_name_or_path: config.baseModelNameOrPath,
      };
    },
    claimsPeftConfig: (json) => json.peft_type === 'TOY',
    savedRank: (shapes) => (shapes.has('toy_u') ? 1 : null),
    createAdapterState: () => new ToyState(),
    createAdapter: ({ base, config, state, index }) =>
      new ToyAdapter({ inFeatures: base.inFeatures, outFeatures: base.outFeatures, config, state, seed: options.seed === undefined ? undefined : options.seed + index }),
  };
}

/** The descriptor the CLI and the registry find the toy plugin by. */
export const pluginPackage = definePluginPackage({
  packageName: '@lora-internal/toy-plugin',
  plugins: [{ name: 'toy', kind: 'adapter', peftTypes: ['TOY'], summary: 'a rank-1 toy adapter with a per-forward gain', create: toy }],
});
