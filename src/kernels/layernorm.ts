/**
 * Layer norm kernel family (shaders/layernorm.wgsl): y = LN(x) * gamma + beta over rows of [rows, C],
 * one workgroup per row (the row's sums reduced in workgroup memory), of the device profile's
 * layernormWg threads. Every device profile runs it where the matmul does not fuse the layer norm
 * into its GEMV prologue. eps comes from the model config (layer_norm_epsilon).
 */
import type { GpuContext } from '../gpu/device.js';
import { ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, f32bits, GpuTensor, isPowerOfTwoIn, Owned } from '../gpu/common.js';
import { grid } from './elementwise.js';

export interface LayerNormArgs {
  x: GpuTensor; // [rows, C] f32
  gamma: GpuTensor; // [C] f32
  beta: GpuTensor; // [C] f32
  y: GpuTensor; // [rows, C] f32 (may not alias x)
  eps: number;
}

export class LayerNormKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly pipeline: GPUComputePipeline,
    /** Threads per workgroup (one workgroup per row). */
    readonly wg: number,
  ) {}

  /**
   * `wg`: threads per row, a power of two (the tree reduction halves it) within the device's
   * maxComputeInvocationsPerWorkgroup: the engine passes its profile's layernormWg; default 256
   * (the GPU profile's), or the device's limit where that is lower.
   */
  static async create(
    ctx: GpuContext,
    wg = Math.min(256, ctx.limits.maxComputeInvocationsPerWorkgroup),
  ): Promise<LayerNormKernel> {
    if (!isPowerOfTwoIn(wg, 1, ctx.limits.maxComputeInvocationsPerWorkgroup))
      throw new ShapeError(
        `layernorm: ${wg} threads per row; needs a power of two up to maxComputeInvocationsPerWorkgroup (${ctx.limits.maxComputeInvocationsPerWorkgroup})`,
      );
    return new LayerNormKernel(ctx, await ctx.pipeline('layernorm', 'main', { WG: wg }), wg);
  }

  bind(owner: Owned, a: LayerNormArgs, label = 'layernorm'): Dispatch {
    const [rows, C] = a.x.shape as [number, number];
    if (a.x.shape.length !== 2)
      throw new ShapeError(`${label}: x must be 2-D [rows, C], got [${a.x.shape.join(', ')}]`);
    expectTensor(`${label} x`, a.x, [rows, C], ['f32']);
    expectTensor(`${label} gamma`, a.gamma, [C], ['f32']);
    expectTensor(`${label} beta`, a.beta, [C], ['f32']);
    expectTensor(`${label} y`, a.y, [rows, C], ['f32']);
    if (!(a.eps > 0)) throw new ShapeError(`${label}: eps must be > 0, got ${a.eps}`);
    // Workgroups: one per row, wrapped into y past the limit.
    const [gx, gy] = grid(this.ctx, label, rows);
    const params = owner.uniform(`${label}.params`, [rows, C, f32bits(a.eps), gx]);
    const bindGroup = this.ctx.device.createBindGroup({
      label,
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: params },
        { binding: 1, resource: binding(a.x) },
        { binding: 2, resource: binding(a.gamma) },
        { binding: 3, resource: binding(a.beta) },
        { binding: 4, resource: binding(a.y) },
      ],
    });
    return { family: 'layernorm', label, pipeline: this.pipeline, bindGroup, workgroups: [gx, gy, 1] };
  }
}
