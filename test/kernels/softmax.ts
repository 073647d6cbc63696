/**
 * Test-only row-wise softmax and argmax over logits [rows, V] (test/shaders/softmax.wgsl), one
 * workgroup per row.
 *   SoftmaxKernel: y = softmax(x) per row (y may be exactly x: in place). -inf entries give 0.
 *   ArgmaxKernel:  out[r] = first index of the row's maximum; NaN never wins; a row with no
 *                  non-NaN value gives 0xFFFFFFFF.
 */
import type { GpuContext } from '../../src/gpu/device.js';
import { ShapeError } from '../../src/errors.js';
import { binding, Dispatch, expectTensor, GpuTensor, groups, Owned } from '../../src/gpu/common.js';
import { aliasing, expectDisjoint } from '../../src/kernels/elementwise.js';
import { InPlaceKernel } from './in-place.js';

const NEG_INF_BITS = 0xff800000;

/** Largest power of two <= min(256, the adapter's invocation limit): the tree reductions need it. */
function wgSize(ctx: GpuContext): number {
  let wg = 1;
  while (wg * 2 <= Math.min(256, ctx.limits.maxComputeInvocationsPerWorkgroup)) wg *= 2;
  return wg;
}

/** Checks x [rows, V] and returns (rows, V, grid). */
function rowsGrid(ctx: GpuContext, label: string, x: GpuTensor): { rows: number; V: number; gx: number; gy: number } {
  if (x.shape.length !== 2) throw new ShapeError(`${label}: x must be 2-D [rows, V], got [${x.shape.join(', ')}]`);
  const [rows, V] = x.shape as [number, number];
  if (rows < 1 || V < 1) throw new ShapeError(`${label}: x must have rows >= 1 and V >= 1, got [${rows}, ${V}]`);
  expectTensor(`${label} x`, x, [rows, V], ['f32']);
  const gx = Math.min(rows, ctx.limits.maxComputeWorkgroupsPerDimension);
  return { rows, V, gx, gy: groups(ctx, label, Math.ceil(rows / gx)) };
}

export interface SoftmaxArgs {
  x: GpuTensor; // [rows, V] f32
  y: GpuTensor; // [rows, V] f32; may be exactly x (in place), not partly overlap it
}

export class SoftmaxKernel extends InPlaceKernel {
  static async create(ctx: GpuContext): Promise<SoftmaxKernel> {
    const wg = wgSize(ctx);
    return new SoftmaxKernel(ctx, ...(await InPlaceKernel.pipelines(ctx, 'softmax', 'softmax', wg)), wg);
  }

  bind(owner: Owned, a: SoftmaxArgs, label = 'softmax'): Dispatch {
    const { rows, V, gx, gy } = rowsGrid(this.ctx, label, a.x);
    expectTensor(`${label} y`, a.y, [rows, V], ['f32']);
    const alias = aliasing(a.x, a.y);
    if (alias === 'overlap')
      throw new ShapeError(
        `${label}: y partly overlaps x (bytes ${a.y.offset} vs ${a.x.offset}); pass the same view for in place`,
      );
    const params = owner.uniform(`${label}.params`, [rows, V, gx, NEG_INF_BITS]);
    return this.unary(label, 'sampling', params, a.x, a.y, alias === 'same', 3, [gx, gy, 1]);
  }
}

export interface ArgmaxArgs {
  x: GpuTensor; // [rows, V] f32
  out: GpuTensor; // [rows] u32
}

export class ArgmaxKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly pipeline: GPUComputePipeline,
    readonly wg: number,
  ) {}

  static async create(ctx: GpuContext): Promise<ArgmaxKernel> {
    const wg = wgSize(ctx);
    return new ArgmaxKernel(ctx, await ctx.pipeline('softmax', 'argmax', { WG: wg }), wg);
  }

  bind(owner: Owned, a: ArgmaxArgs, label = 'argmax'): Dispatch {
    const { rows, V, gx, gy } = rowsGrid(this.ctx, label, a.x);
    expectTensor(`${label} out`, a.out, [rows], ['u32']);
    expectDisjoint(label, 'out', a.out, { x: a.x });
    const params = owner.uniform(`${label}.params`, [rows, V, gx, NEG_INF_BITS]);
    const bindGroup = this.ctx.device.createBindGroup({
      label,
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: params },
        { binding: 1, resource: binding(a.x) },
        { binding: 4, resource: binding(a.out) },
      ],
    });
    return { family: 'sampling', label, pipeline: this.pipeline, bindGroup, workgroups: [gx, gy, 1] };
  }
}
