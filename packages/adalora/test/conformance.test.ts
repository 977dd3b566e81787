import { describeAdapterPlugin } from '@lora/core/testing';
import { adalora } from '../src/index.js';

describeAdapterPlugin(adalora({ seed: 4 }), {
  withSeed: (seed) => adalora({ seed }),
  validConfig: { initR: 4, targetR: 2, totalStep: 10, tinit: 2, tfinal: 2, loraAlpha: 8, loraDropout: 0.1, targetModules: ['query', 'conv'] },
  invalidConfigs: [
    { targetModules: ['query'] },
    { totalStep: 0 },
    { totalStep: 10, initR: 0 },
    { totalStep: 10, initR: 2.5 },
    { totalStep: 10, beta1: 1 },
    { totalStep: 10, beta2: 0 },
    { totalStep: 10, orthRegWeight: -0.1 },
    { totalStep: 10, deltaT: 0 },
    { totalStep: 10, tinit: 5, tfinal: 5 },
    { totalStep: 10, targetR: 13 },
    { totalStep: 10, useDora: true },
    { totalStep: 10, loraDropout: 1 },
    { totalStep: 10, initR: 4, growth: { startRank: 5, every: 2 } },
    { totalStep: 10, bogus: 1 },
  ],
});
