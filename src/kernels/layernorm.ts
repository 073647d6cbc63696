/**
 * Layer norm kernel family (shaders/layernorm.wgsl): y = LN(x) * gamma + beta over rows of [rows, C].
 * One workgroup per row (`main`, GPUs), or on CPU adapters one invocation per row, 8 rows per
 * workgroup (`rows_lanes`: no barriers, which lavapipe runs as coroutines; 1024 rows of 768 took
 * 14.5 ms with `main` and 1.8 ms with it). eps comes from the model config (layer_norm_epsilon).
 */
import type { GpuContext } from '../gpu/device.js';
import { InvalidOptionError, ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, f32bits, GpuTensor, Owned } from '../gpu/common.js';
import { grid } from './elementwise.js';

export interface LayerNormArgs {
  x: GpuTensor; // [rows, C] f32
  gamma: GpuTensor; // [C] f32
  beta: GpuTensor; // [C] f32
  y: GpuTensor; // [rows, C] f32 (may not alias x)
  eps: number;
}

export interface LayerNormOptions {
  /** One invocation per row (`rows_lanes`) instead of one workgroup per row. Default: on CPU adapters. */
  lanes?: boolean;
}

/** Rows per workgroup of rows_lanes (LANES in the shader). */
const ROW_LANES = 8;

export class LayerNormKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly pipeline: GPUComputePipeline,
    /** Threads per workgroup of `main` (one workgroup per row), or rows per workgroup of `rows_lanes`. */
    readonly wg: number,
    /** Whether rows take one invocation each (rows_lanes). */
    readonly lanes: boolean,
  ) {}

  static async create(ctx: GpuContext, opts: LayerNormOptions = {}): Promise<LayerNormKernel> {
    if (opts.lanes !== undefined && typeof opts.lanes !== 'boolean')
      throw new InvalidOptionError(`LayerNormKernel: lanes must be a boolean, got ${String(opts.lanes)}`);
    if (opts.lanes ?? ctx.isCpuAdapter) {
      return new LayerNormKernel(
        ctx,
        await ctx.pipeline('layernorm', 'rows_lanes', { LANES: ROW_LANES }),
        ROW_LANES,
        true,
      );
    }
    // 256 threads fits every adapter's default limit; smaller widths waste little on GPT-2's C >= 64.
    const wg = Math.min(256, ctx.limits.maxComputeInvocationsPerWorkgroup);
    return new LayerNormKernel(ctx, await ctx.pipeline('layernorm', 'main', { WG: wg }), wg, false);
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
    // Workgroups: one per row (main) or per ROW_LANES rows (rows_lanes), wrapped into y past the limit.
    const [gx, gy] = grid(this.ctx, label, this.lanes ? Math.ceil(rows / ROW_LANES) : rows);
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
