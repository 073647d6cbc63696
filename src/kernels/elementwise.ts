/**
 * Elementwise kernels (shaders/elementwise.wgsl), and the helpers the kernels share: workgroup
 * grids past the per-dimension limit, aliasing checks.
 *   GatherRowsKernel: out[i, :] = x[idx[i], :], x [T, C], idx [n] u32 (each row's last token before
 *                     the LM head); an idx >= T writes a NaN row instead of reading out of bounds.
 * (gelu and add on their own are test kernels: test/kernels/elementwise.ts.)
 */
import type { GpuContext } from '../gpu/device.js';
import { ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, GpuTensor, groups, Owned, tensorBytes } from '../gpu/common.js';

export const NAN_BITS = 0x7fc00000;

/** Workgroup grid [gx, gy] covering `n` workgroups (wrapping into y past the per-dimension limit). */
export function grid(ctx: GpuContext, what: string, n: number): [number, number] {
  const maxX = ctx.limits.maxComputeWorkgroupsPerDimension;
  const gx = Math.max(1, Math.min(n, maxX));
  return [gx, groups(ctx, what, Math.ceil(n / gx))];
}

/** Byte ranges of two tensors: 'same' (identical view), 'overlap' (partial) or 'disjoint'. */
export function aliasing(a: GpuTensor, b: GpuTensor): 'same' | 'overlap' | 'disjoint' {
  if (a.buffer !== b.buffer) return 'disjoint';
  const ae = a.offset + tensorBytes(a.shape, a.dtype);
  const be = b.offset + tensorBytes(b.shape, b.dtype);
  if (ae <= b.offset || be <= a.offset) return 'disjoint';
  return a.offset === b.offset && ae === be ? 'same' : 'overlap';
}

/** Throws ShapeError if `t` overlaps any of `others` (WebGPU forbids a written range bound twice). */
export function expectDisjoint(label: string, what: string, t: GpuTensor, others: Record<string, GpuTensor>): void {
  for (const [name, o] of Object.entries(others)) {
    if (aliasing(t, o) !== 'disjoint') {
      throw new ShapeError(
        `${label}: ${what} (buffer "${t.buffer.label}" at byte ${t.offset}) overlaps ${name} (byte ${o.offset}); use distinct buffers`,
      );
    }
  }
}

/** Threads per workgroup of the elementwise kernels. */
export function wgSize(ctx: GpuContext): number {
  // 256 fits every adapter's default limit (SwiftShader's maximum).
  return Math.min(256, ctx.limits.maxComputeInvocationsPerWorkgroup);
}

export interface GatherRowsArgs {
  x: GpuTensor; // [T, C] f32
  idx: GpuTensor; // [n] u32, each < T (else that output row is NaN)
  out: GpuTensor; // [n, C] f32, disjoint from x
}

export class GatherRowsKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly pipeline: GPUComputePipeline,
    readonly wg: number,
  ) {}

  static async create(ctx: GpuContext): Promise<GatherRowsKernel> {
    const wg = wgSize(ctx);
    return new GatherRowsKernel(ctx, await ctx.pipeline('elementwise', 'gather_rows', { WG: wg }), wg);
  }

  bind(owner: Owned, a: GatherRowsArgs, label = 'gather_rows'): Dispatch {
    if (a.x.shape.length !== 2) throw new ShapeError(`${label}: x must be 2-D [T, C], got [${a.x.shape.join(', ')}]`);
    const [T, C] = a.x.shape as [number, number];
    if (a.idx.shape.length !== 1)
      throw new ShapeError(`${label}: idx must be 1-D [n], got [${a.idx.shape.join(', ')}]`);
    const n = a.idx.shape[0]!;
    expectTensor(`${label} x`, a.x, [T, C], ['f32']);
    expectTensor(`${label} idx`, a.idx, [n], ['u32']);
    expectTensor(`${label} out`, a.out, [n, C], ['f32']);
    expectDisjoint(label, 'out', a.out, { x: a.x, idx: a.idx });
    const [gx, gy] = grid(this.ctx, label, Math.ceil((n * C) / this.wg));
    const params = owner.uniform(`${label}.params`, [n, gx, C, T, NAN_BITS]);
    const bindGroup = this.ctx.device.createBindGroup({
      label,
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: params },
        { binding: 1, resource: binding(a.x) },
        { binding: 2, resource: binding(a.out) },
        { binding: 4, resource: binding(a.idx) },
      ],
    });
    return { family: 'elementwise', label, pipeline: this.pipeline, bindGroup, workgroups: [gx, gy, 1] };
  }
}
