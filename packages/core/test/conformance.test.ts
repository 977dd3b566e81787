import { lora } from '../src/index.js';
import { describeAdapterPlugin } from '../src/testing.js';

describeAdapterPlugin(lora({ seed: 4 }), {
  withSeed: (seed) => lora({ seed }),
  validConfig: { r: 4, loraAlpha: 8, targetModules: ['query', 'conv'], loraDropout: 0.1 },
  invalidConfigs: [{ r: 0 }, { r: 2.5 }, { loraDropout: 1 }, { bias: 'some' }, { targetModules: 'x', layersToTransform: [0] }, { rr: 4 }, { useDora: true }],
});
