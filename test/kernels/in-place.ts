/** The base of the test-only kernels with an in-place twin (gelu, add, softmax). */
import type { GpuContext } from '../../src/gpu/device.js';
import { binding, type Dispatch, type GpuTensor, type UniformSlice } from '../../src/gpu/common.js';
import './test-shaders.js';

/**
 * Base of the kernels with an out-of-place entry point `<entry>` and an in-place one
 * `<entry>_inplace` (which binds its operand once, read_write: one buffer range may not be bound
 * both as read and as read_write storage): gelu, add, softmax. Both pipelines are built once, with
 * WG threads per workgroup.
 */
export abstract class InPlaceKernel {
  protected constructor(
    protected readonly ctx: GpuContext,
    protected readonly outOfPlace: GPUComputePipeline,
    protected readonly inPlace: GPUComputePipeline,
    /** Threads per workgroup. */
    readonly wg: number,
  ) {}

  /** The [out-of-place, in-place] pipelines of `entry` in `shader`. */
  protected static pipelines(
    ctx: GpuContext,
    shader: string,
    entry: string,
    wg: number,
  ): Promise<[GPUComputePipeline, GPUComputePipeline]> {
    return Promise.all([ctx.pipeline(shader, entry, { WG: wg }), ctx.pipeline(shader, `${entry}_inplace`, { WG: wg })]);
  }

  /**
   * The dispatch of a unary entry pair: x at binding 1 and y at 2, or in place y alone at
   * `inPlaceBinding` (read_write); `params` at 0.
   */
  protected unary(
    label: string,
    family: Dispatch['family'],
    params: UniformSlice,
    x: GpuTensor,
    y: GpuTensor,
    inPlace: boolean,
    inPlaceBinding: number,
    workgroups: [number, number, number],
  ): Dispatch {
    const pipeline = inPlace ? this.inPlace : this.outOfPlace;
    const entries: GPUBindGroupEntry[] = inPlace
      ? [
          { binding: 0, resource: params },
          { binding: inPlaceBinding, resource: binding(y) },
        ]
      : [
          { binding: 0, resource: params },
          { binding: 1, resource: binding(x) },
          { binding: 2, resource: binding(y) },
        ];
    const bindGroup = this.ctx.device.createBindGroup({ label, layout: pipeline.getBindGroupLayout(0), entries });
    return { family, label, pipeline, bindGroup, workgroups };
  }
}
