import { SILU_GRAD_KERNEL, SILU_KERNEL, silu } from '../src/internal.js';
import { describeFusedActivation } from './fused-activation-suite.js';

/** σ(x) in float64, without overflow on either side. */
const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));

describeFusedActivation({
  name: "Llama's SiLU",
  activation: silu,
  kernels: { value: SILU_KERNEL, gradient: SILU_GRAD_KERNEL },
  compositeKernels: ['Sigmoid'],
  reference: (x) => x * sigmoid(x),
  slope: (x) => sigmoid(x) * (1 + x * (1 - sigmoid(x))),
  // Zeros, both tails (σ = 0 or 1, and past the exponential's clamp at ±87) and values over the whole range.
  spread: 12,
  extremes: [0, -0, 100, -100, 1e-8, -1e-8, 30, -30, 88, -88, 5.5, -5.5],
  // The shared exponential is within 1 unit in the last place, and the division and products add a few.
  float64Tolerance: { atol: 1e-7, rtol: 2e-6 },
  compositeTolerance: { atol: 1e-6, rtol: 1e-5 },
});
