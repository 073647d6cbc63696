/** What the matmul tests (f32 / f16 in matmul.test.ts, q8 / q4 in quant.test.ts) share. */
import type { MatmulKernel, WeightLayout } from '../src/kernels/matmul.js';
import type { Dispatch, GpuTensor, Owned } from '../src/gpu/common.js';
import { poisoned, upload } from './helpers.js';

/** The linear-layer options of a test case. */
export interface LinearCase {
  M: number;
  N: number;
  layout: WeightLayout;
  gelu?: boolean;
  acc?: boolean;
  splitK?: number;
}

/**
 * Binds case `c` on kernel `k` (`variant` forced where given) with a fresh output [M, N]: poisoned
 * (NaN), or holding `base` for an accumulating case. Returns it with the dispatches, not yet run.
 */
export function bindCase(
  owned: Owned,
  k: MatmulKernel,
  c: LinearCase,
  t: { x: GpuTensor; w: GpuTensor; bias?: GpuTensor; base?: Float32Array },
  variant?: 'gemm' | 'gemv',
): { out: GpuTensor; ds: Dispatch[] } {
  const out = t.base ? upload(owned, t.base, [c.M, c.N]) : poisoned(owned, [c.M, c.N]);
  const ds = k.bind(owned, {
    x: t.x,
    w: t.w,
    layout: c.layout,
    bias: t.bias,
    activation: c.gelu ? 'gelu' : 'none',
    accumulate: c.acc,
    out,
    variant,
    splitK: c.splitK,
  });
  return { out, ds };
}
