// Helpers shared by @lora/* packages. Not part of the public API: may change in any release.
export {
  adapterBaseShape,
  camelToSnake,
  optionsToPeftJson,
  parseConfigWithSchema,
  peftJsonToOptions,
  refineTargetSelection,
  snakeToCamel,
  targetSelectionShape,
} from './config-helpers.js';
export { inMemoryTensorName } from './adapter-layer.js';
export { describeValue } from './errors.js';
export { thinSvd } from './svd.js';
export { loraConfigShape, LORA_CONFIG_EXAMPLES, LORA_CONFIG_FIELDS } from './lora-config.js';
export { seededRandom } from './random.js';
export { assertTensorsFit, compareTensorShapes, sameShape } from './tensor-fit.js';
export type { TensorFit } from './tensor-fit.js';
export { replaceLayers } from './layer-replacement.js';
