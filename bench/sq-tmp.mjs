import { coreInternal, cudaBackend } from './lib/packages.mjs';
import { runVariant } from './lib/variants.mjs';
const report = await cudaBackend.useBestBackend({});
let spy = null; const steps = [];
await runVariant({ variant: 'lora', configName: 'small', steps: 4, onStepEnd: (step) => { if (spy) { spy.stop(); steps.push(spy.calls); } spy = step < 4 ? coreInternal.spyOnKernels(report.backend) : null; } });
for (const calls of steps) {
  const idx = calls.map((c, i) => [c, i]).filter(([c]) => c.kernelName === 'Square');
  console.log(idx.map(([c, i]) => `${i}:${c.selfMs.toFixed(2)}[${c.inputShapes.x}] prev=${calls[i-1].kernelName}`).join(' '));
}
