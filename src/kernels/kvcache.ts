/**
 * KV-cache kernels (shaders/kvcache.wgsl). A cache is f32 or f16 (KvDtype: IEEE halves packed two
 * per u32 word, C even); a KvWriteKernel is built for one of them, the gather copies words of either.
 *   KvWriteKernel:  k/v parts of qkv [T, 3C] -> kCache/vCache [rows, cap, C] at slot pos % cap of
 *                   each token's row (meta [T, 2] u32 = (row, pos)). Tokens with row >= rows are
 *                   skipped. Two tokens of one step must not share a (row, slot).
 *   KvGatherKernel: dst[r, s, :] = src[parent[r], s, :] for s < len, either dtype (beam reorder on the GPU, or one
 *                   prefilled row to N rows with parent = zeros). len can change between submits
 *                   through the returned dispatch's setLength() (a queue.writeBuffer, no rebinding).
 */
import type { GpuContext } from '../gpu/device.js';
import { ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, GpuTensor, Owned } from '../gpu/common.js';
import { expectDisjoint, grid, NAN_BITS } from './elementwise.js';

function wgSize(ctx: GpuContext): number {
  return Math.min(256, ctx.limits.maxComputeInvocationsPerWorkgroup);
}

/** What a KV cache stores: f32, or IEEE halves two per u32 word (math stays f32). */
export type KvDtype = 'f32' | 'f16';
export const KV_DTYPES: readonly KvDtype[] = ['f32', 'f16'];

/** Bit pattern that fills one u32 word of a cache of this dtype with NaN (one f32, or two halves). */
export function kvNanBits(dtype: KvDtype): number {
  return dtype === 'f16' ? 0x7e007e00 : NAN_BITS;
}

/** Checks a cache tensor is 3-D [rows, cap, C] of `dtypes` (f16: C even) and returns its dims. */
function cacheDims(
  label: string,
  what: string,
  t: GpuTensor,
  dtypes: readonly KvDtype[] = KV_DTYPES,
): [number, number, number] {
  if (t.shape.length !== 3)
    throw new ShapeError(`${label}: ${what} must be 3-D [rows, capacity, C], got [${t.shape.join(', ')}]`);
  expectTensor(`${label} ${what}`, t, t.shape, dtypes);
  if (t.dtype === 'f16' && t.shape[2]! % 2 !== 0)
    throw new ShapeError(`${label}: an f16 ${what} needs an even C (two halves per word), got ${t.shape[2]}`);
  return t.shape as [number, number, number];
}

export interface KvWriteArgs {
  qkv: GpuTensor; // [T, 3C] f32
  meta: GpuTensor; // [T, 2] u32 (row, pos)
  kCache: GpuTensor; // [rows, cap, C] f32, or f16 (C / 2 words per slot) with a kernel built for f16
  vCache: GpuTensor; // [rows, cap, C], the same dtype, another buffer range than kCache
}

export class KvWriteKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly pipeline: GPUComputePipeline,
    readonly wg: number,
    /** The cache dtype it writes. */
    readonly kvDtype: KvDtype,
  ) {}

  static async create(ctx: GpuContext, kvDtype: KvDtype = 'f32'): Promise<KvWriteKernel> {
    const wg = wgSize(ctx);
    // f32 keeps the module's default (KV_F16 false): the same pipeline as before f16 caches existed.
    const constants: Record<string, number> = kvDtype === 'f16' ? { WG: wg, KV_F16: 1 } : { WG: wg };
    return new KvWriteKernel(ctx, await ctx.pipeline('kvcache', 'kv_write', constants), wg, kvDtype);
  }

  bind(owner: Owned, a: KvWriteArgs, label = 'kv_write'): Dispatch {
    const [rows, cap, C] = cacheDims(label, 'kCache', a.kCache, [this.kvDtype]);
    expectTensor(`${label} vCache`, a.vCache, [rows, cap, C], [this.kvDtype]);
    if (a.qkv.shape.length !== 2)
      throw new ShapeError(`${label}: qkv must be 2-D [T, 3C], got [${a.qkv.shape.join(', ')}]`);
    const T = a.qkv.shape[0]!;
    expectTensor(`${label} qkv`, a.qkv, [T, 3 * C], ['f32']);
    expectTensor(`${label} meta`, a.meta, [T, 2], ['u32']);
    expectDisjoint(label, 'kCache', a.kCache, { vCache: a.vCache, qkv: a.qkv, meta: a.meta });
    expectDisjoint(label, 'vCache', a.vCache, { qkv: a.qkv, meta: a.meta });
    const words = this.kvDtype === 'f16' ? C / 2 : C; // per token: a thread each
    const [gx, gy] = grid(this.ctx, label, Math.ceil((T * words) / this.wg));
    const params = owner.uniform(`${label}.params`, [T, C, rows, cap, gx]);
    const bindGroup = this.ctx.device.createBindGroup({
      label,
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: params },
        { binding: 1, resource: binding(a.qkv) },
        { binding: 2, resource: binding(a.meta) },
        { binding: 3, resource: binding(a.kCache) },
        { binding: 4, resource: binding(a.vCache) },
      ],
    });
    return { family: 'kvcache', label, pipeline: this.pipeline, bindGroup, workgroups: [gx, gy, 1] };
  }
}

export interface KvGatherArgs {
  src: GpuTensor; // [srcRows, cap, C] f32 or f16
  dst: GpuTensor; // [rows, cap, C] of src's dtype, a different buffer range from src
  parent: GpuTensor; // [rows] u32: dst row r copies src row parent[r] (>= srcRows: NaN row)
  len: number; // slots 0..len-1 are copied
  /** Most slots setLength() may ask for later (the dispatch covers this many); default len. */
  maxLen?: number;
}

/** A gather dispatch whose slot count can be changed before a later submit. */
export interface KvGatherDispatch extends Dispatch {
  /**
   * Sets the slots copied by this dispatch (0 <= len <= maxLen) with queue.writeBuffer: it applies
   * to every submit after this call (not to dispatches already submitted).
   */
  setLength(len: number): void;
}

export class KvGatherKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly pipeline: GPUComputePipeline,
    readonly wg: number,
  ) {}

  static async create(ctx: GpuContext): Promise<KvGatherKernel> {
    const wg = wgSize(ctx);
    return new KvGatherKernel(ctx, await ctx.pipeline('kvcache', 'kv_gather', { WG: wg }), wg);
  }

  bind(owner: Owned, a: KvGatherArgs, label = 'kv_gather'): KvGatherDispatch {
    const [srcRows, cap, C] = cacheDims(label, 'src', a.src);
    const [rows, dcap, dC] = cacheDims(label, 'dst', a.dst);
    if (dcap !== cap || dC !== C || a.dst.dtype !== a.src.dtype)
      throw new ShapeError(
        `${label}: dst [${a.dst.shape.join(', ')}] ${a.dst.dtype} must match src's capacity, width and dtype [*, ${cap}, ${C}] ${a.src.dtype}`,
      );
    const dtype = a.src.dtype as KvDtype;
    const W = dtype === 'f16' ? C / 2 : C; // words per slot: the shader copies words
    expectTensor(`${label} parent`, a.parent, [rows], ['u32']);
    expectDisjoint(label, 'dst', a.dst, { src: a.src, parent: a.parent });
    const maxLen = a.maxLen ?? a.len;
    const checkLen = (len: number) => {
      if (!Number.isInteger(len) || len < 0 || len > maxLen) {
        throw new ShapeError(`${label}: len must be an integer in [0, ${maxLen}] (maxLen), got ${len}`);
      }
    };
    if (!Number.isInteger(maxLen) || maxLen < 0 || maxLen > cap)
      throw new ShapeError(`${label}: maxLen must be an integer in [0, ${cap}] (capacity), got ${maxLen}`);
    checkLen(a.len);
    const span = maxLen * W;
    const [gx, gy] = grid(this.ctx, label, Math.ceil((rows * span) / this.wg));
    const params = owner.uniform(`${label}.params`, [rows, srcRows, cap, W, a.len, span, gx, kvNanBits(dtype)]);
    const bindGroup = this.ctx.device.createBindGroup({
      label,
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: params },
        { binding: 1, resource: binding(a.src) },
        { binding: 2, resource: binding(a.parent) },
        { binding: 3, resource: binding(a.dst) },
      ],
    });
    const queue = this.ctx.device.queue;
    const word = new Uint32Array(1);
    return {
      family: 'kvcache',
      label,
      pipeline: this.pipeline,
      bindGroup,
      workgroups: [gx, gy, 1],
      setLength(len: number) {
        checkLen(len);
        word[0] = len;
        queue.writeBuffer(params.buffer, params.offset + 16, word); // GatherParams.len is the 5th word
      },
    };
  }
}
