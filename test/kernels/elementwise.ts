/**
 * Test-only elementwise kernels (test/shaders/elementwise_test.wgsl, appended to
 * shaders/elementwise.wgsl): the engine applies gelu and the residual add in the matmul epilogue;
 * these run the same arithmetic on its own.
 *   GeluKernel: y = gelu_new(x) over [n] (y may be x: in place)
 *   AddKernel:  out = a + b over [n] (out may be a or b: in place)
 */
import type { GpuContext } from '../../src/gpu/device.js';
import { ShapeError } from '../../src/errors.js';
import { binding, type Dispatch, expectTensor, type GpuTensor, numel, type Owned } from '../../src/gpu/common.js';
import { aliasing, grid, NAN_BITS, wgSize } from '../../src/kernels/elementwise.js';
import { InPlaceKernel } from './in-place.js';

const MODULE = 'elementwise+elementwise_test';

export interface GeluArgs {
  x: GpuTensor; // [...] f32
  y: GpuTensor; // same element count as x, f32; may be exactly x (in place), not partly overlap it
}

export class GeluKernel extends InPlaceKernel {
  static async create(ctx: GpuContext): Promise<GeluKernel> {
    const wg = wgSize(ctx);
    return new GeluKernel(ctx, ...(await InPlaceKernel.pipelines(ctx, MODULE, 'gelu', wg)), wg);
  }

  bind(owner: Owned, a: GeluArgs, label = 'gelu'): Dispatch {
    const n = numel(a.x.shape);
    expectTensor(`${label} x`, a.x, a.x.shape, ['f32']);
    expectTensor(`${label} y`, a.y, a.y.shape, ['f32']);
    if (numel(a.y.shape) !== n) {
      throw new ShapeError(
        `${label}: y has ${numel(a.y.shape)} elements ([${a.y.shape.join(', ')}]), x has ${n} ([${a.x.shape.join(', ')}])`,
      );
    }
    const alias = aliasing(a.x, a.y);
    if (alias === 'overlap')
      throw new ShapeError(
        `${label}: y partly overlaps x (bytes ${a.y.offset} vs ${a.x.offset}); pass the same view for in place`,
      );
    const [gx, gy] = grid(this.ctx, label, Math.ceil(n / this.wg));
    const params = owner.uniform(`${label}.params`, [n, gx, 0, 0, NAN_BITS]);
    return this.unary(label, 'elementwise', params, a.x, a.y, alias === 'same', 5, [gx, gy, 1]);
  }
}

export interface AddArgs {
  a: GpuTensor; // [...] f32
  b: GpuTensor; // same element count, f32
  out: GpuTensor; // same element count, f32; may be exactly a or b (in place), not partly overlap
}

export class AddKernel extends InPlaceKernel {
  static async create(ctx: GpuContext): Promise<AddKernel> {
    const wg = wgSize(ctx);
    return new AddKernel(ctx, ...(await InPlaceKernel.pipelines(ctx, MODULE, 'add', wg)), wg);
  }

  bind(owner: Owned, args: AddArgs, label = 'add'): Dispatch {
    const { a, b, out } = args;
    const n = numel(a.shape);
    for (const [name, t] of [
      ['a', a],
      ['b', b],
      ['out', out],
    ] as const) {
      expectTensor(`${label} ${name}`, t, t.shape, ['f32']);
      if (numel(t.shape) !== n)
        throw new ShapeError(
          `${label}: ${name} has ${numel(t.shape)} elements ([${t.shape.join(', ')}]), a has ${n} ([${a.shape.join(', ')}])`,
        );
    }
    const wa = aliasing(out, a);
    const wb = aliasing(out, b);
    if (wa === 'overlap' || wb === 'overlap')
      throw new ShapeError(
        `${label}: out partly overlaps ${wa === 'overlap' ? 'a' : 'b'}; pass the same view for in place`,
      );
    if (wa === 'same' && wb === 'same')
      throw new ShapeError(`${label}: out, a and b are all the same range; use distinct inputs`);
    const [gx, gy] = grid(this.ctx, label, Math.ceil(n / this.wg));
    const params = owner.uniform(`${label}.params`, [n, gx, 0, 0, NAN_BITS]);
    let pipeline: GPUComputePipeline;
    let entries: GPUBindGroupEntry[];
    if (wa === 'same' || wb === 'same') {
      // out += the other operand (addition commutes)
      pipeline = this.inPlace;
      entries = [
        { binding: 0, resource: params },
        { binding: 3, resource: binding(wa === 'same' ? b : a) },
        { binding: 5, resource: binding(out) },
      ];
    } else {
      pipeline = this.outOfPlace;
      entries = [
        { binding: 0, resource: params },
        { binding: 1, resource: binding(a) },
        { binding: 2, resource: binding(out) },
        { binding: 3, resource: binding(b) },
      ];
    }
    const bindGroup = this.ctx.device.createBindGroup({ label, layout: pipeline.getBindGroupLayout(0), entries });
    return { family: 'elementwise', label, pipeline, bindGroup, workgroups: [gx, gy, 1] };
  }
}
