import { geluTanh, GELU_TANH_GRAD_KERNEL, GELU_TANH_KERNEL } from '../src/internal.js';
import { describeFusedActivation } from './fused-activation-suite.js';

/** gelu_new and its derivative in float64 (the tanh form, as Hugging Face writes it). */
const C = Math.sqrt(2 / Math.PI);
const geluNew = (x: number): number => 0.5 * x * (1 + Math.tanh(C * (x + 0.044715 * x ** 3)));
const geluNewSlope = (x: number): number => {
  const t = Math.tanh(C * (x + 0.044715 * x ** 3));
  return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * C * (1 + 3 * 0.044715 * x * x);
};

describeFusedActivation({
  name: 'gelu_new',
  activation: geluTanh,
  kernels: { value: GELU_TANH_KERNEL, gradient: GELU_TANH_GRAD_KERNEL },
  compositeKernels: ['Sigmoid'],
  reference: geluNew,
  slope: geluNewSlope,
  // Zeros, the extremes (exp clamped, σ = 0 or 1) and values over the whole range.
  spread: 12,
  extremes: [0, -0, 100, -100, 1e-8, -1e-8, 30, -30],
  // The gate's argument is rounded to float32 in both forms, which bounds the agreement near |x| ≈ 10 (σ ≈ e^−u).
  float64Tolerance: { atol: 1e-6, rtol: 2e-5 },
  compositeTolerance: { atol: 1e-6, rtol: 1e-5 },
});
