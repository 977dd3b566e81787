import { describe, expect, it } from 'vitest';
// @ts-expect-error -- plain ES module of the private bench package (no declaration file)
import { referenceBlasWarning } from '../lib/torch.mjs';

describe('referenceBlasWarning', () => {
  it('warns when PyTorch loaded only the reference BLAS, naming it and the fix', () => {
    const warning = referenceBlasWarning('libblas.so.3.11.0') as string | null;
    expect(warning).toMatch(/no optimized BLAS \(libblas\.so\.3\.11\.0\)/u);
    expect(warning).toMatch(/apt-get install libopenblas0-pthread/u);
  });

  it('is silent when an optimized BLAS is among the libraries loaded', () => {
    for (const blas of ['libblas.so.3, libopenblasp-r0.3.21.so', 'libmkl_rt.so.2', 'libblis.so.4']) expect(referenceBlasWarning(blas)).toBeNull();
  });
});
