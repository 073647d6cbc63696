/**
 * Causal multi-head attention over the KV cache (shaders/attention.wgsl), one code path for prefill
 * (many tokens of one or several rows) and decode (one token per row).
 *
 * Query t (row r, position p from meta) attends to its row's positions max(0, p - cap + 1)..p,
 * read from slot (position % cap): the ring's window. The caller guarantees
 *   - kv_write of this step ran before (the query's own key is in the cache);
 *   - p < cap in practice (the engine shifts before a row would wrap), so the window is 0..p;
 *   - the cache slots of that window hold this row's keys/values for those positions (past the
 *     capacity that holds for a decode step, one token per row; a later token of the same step
 *     would overwrite a slot still inside an earlier token's window).
 * A token whose row is >= rows gets a NaN output (defence in depth).
 */
import type { GpuContext } from '../engine/device.js';
import { ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, f32bits, GpuTensor, Owned } from './common.js';
import { expectDisjoint, grid, NAN_BITS } from './elementwise.js';

/** Largest head size the kernel's workgroup arrays hold. */
export const ATTENTION_MAX_HEAD_DIM = 256;

export interface AttentionArgs {
  qkv: GpuTensor; // [T, 3C] f32
  kCache: GpuTensor; // [rows, cap, C] f32
  vCache: GpuTensor; // [rows, cap, C] f32
  meta: GpuTensor; // [T, 2] u32 (row, pos)
  out: GpuTensor; // [T, C] f32, disjoint from the inputs
  nHead: number;
}

export class AttentionKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly pipeline: GPUComputePipeline,
    private readonly pipelineVec4: GPUComputePipeline,
    readonly wg: number,
  ) {}

  /** Use the scalar kernel even where the vec4 one applies (tests cover both paths). */
  forceScalar = false;

  static async create(ctx: GpuContext): Promise<AttentionKernel> {
    // 32 threads (a power of two for the tree max): on lavapipe smaller workgroups cut the fixed
    // cost per block (measured: prefill T=128 -30%, decode at pos 1000 -35% against 64); it is one
    // warp/SIMD group on most GPUs. Every adapter allows >= 256 invocations, so no clamp is needed.
    const wg = 32;
    const [scalar, vec4] = await Promise.all([
      ctx.pipeline('attention', 'main', { WG: wg }),
      ctx.pipeline('attention', 'main_vec4', { WG: wg }),
    ]);
    return new AttentionKernel(ctx, scalar, vec4, wg);
  }

  bind(owner: Owned, a: AttentionArgs, label = 'attention'): Dispatch {
    if (a.kCache.shape.length !== 3) throw new ShapeError(`${label}: kCache must be 3-D [rows, capacity, C], got [${a.kCache.shape.join(', ')}]`);
    const [rows, cap, C] = a.kCache.shape as [number, number, number];
    if (a.qkv.shape.length !== 2) throw new ShapeError(`${label}: qkv must be 2-D [T, 3C], got [${a.qkv.shape.join(', ')}]`);
    const T = a.qkv.shape[0]!;
    const nHead = a.nHead;
    if (!Number.isInteger(nHead) || nHead < 1 || C % nHead !== 0) {
      throw new ShapeError(`${label}: nHead must be a positive divisor of C = ${C}, got ${nHead}`);
    }
    const D = C / nHead;
    if (D > ATTENTION_MAX_HEAD_DIM) throw new ShapeError(`${label}: head size ${D} (C ${C} / nHead ${nHead}) passes the kernel's maximum ${ATTENTION_MAX_HEAD_DIM}`);
    expectTensor(`${label} kCache`, a.kCache, [rows, cap, C], ['f32']);
    expectTensor(`${label} vCache`, a.vCache, [rows, cap, C], ['f32']);
    expectTensor(`${label} qkv`, a.qkv, [T, 3 * C], ['f32']);
    expectTensor(`${label} meta`, a.meta, [T, 2], ['u32']);
    expectTensor(`${label} out`, a.out, [T, C], ['f32']);
    expectDisjoint(label, 'out', a.out, { qkv: a.qkv, kCache: a.kCache, vCache: a.vCache, meta: a.meta });
    const [gx, gy] = grid(this.ctx, label, T * nHead);
    const params = owner.uniform(`${label}.params`, [T, C, nHead, D, rows, cap, f32bits(1 / Math.sqrt(D)), gx, NAN_BITS]);
    // 4 dims per load when head offsets are multiples of 4 (every GPT-2 size: D = 64)
    const pipeline = D % 4 === 0 && !this.forceScalar ? this.pipelineVec4 : this.pipeline;
    const bindGroup = this.ctx.device.createBindGroup({
      label,
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: params } },
        { binding: 1, resource: binding(a.qkv) },
        { binding: 2, resource: binding(a.meta) },
        { binding: 3, resource: binding(a.kCache) },
        { binding: 4, resource: binding(a.vCache) },
        { binding: 5, resource: binding(a.out) },
      ],
    });
    return { family: 'attention', label, pipeline, bindGroup, workgroups: [gx, gy, 1] };
  }
}
