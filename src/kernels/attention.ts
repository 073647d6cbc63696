/**
 * Causal multi-head attention over the KV cache (shaders/attention.wgsl), one code path for prefill
 * (many tokens of one or several rows) and decode (one token per row).
 *
 * Query t (row r, position p from meta) attends to its row's positions max(0, p - cap + 1)..p,
 * read from slot (position % cap): the ring's window. The caller guarantees
 *   - kv_write of this step ran before (the query's own key is in the cache), or `writeKv` is set
 *     and every token of the step is in a row of its own (a decode step);
 *   - p < cap in practice (the engine shifts before a row would wrap), so the window is 0..p;
 *   - the cache slots of that window hold this row's keys/values for those positions (past the
 *     capacity that holds for a decode step, one token per row; a later token of the same step
 *     would overwrite a slot still inside an earlier token's window).
 * A token whose row is >= rows gets a NaN output (defence in depth).
 */
import type { GpuContext } from '../engine/device.js';
import { InvalidOptionError, ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, f32bits, GpuTensor, isPowerOfTwoIn, Owned } from './common.js';
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
  /**
   * Which kernel: 'query' (one workgroup per token and head; vec4 loads when D % 4 == 0, else
   * scalar), 'scalar' (the same, always scalar), 'lanes' (one invocation per token and head, no
   * barriers: the kernel's `lanesHeadDim` must equal D), 'pairs' (one invocation per two
   * consecutive tokens and a head, sharing each K/V load when the tokens are neighbours in one row;
   * the same head-size rule; not with writeKv), 'tiled' (8 consecutive tokens x one head per
   * workgroup sharing K/V loads: for prompts; needs D % 4 == 0 and D <= 64; tiles mixing rows fall
   * back to one token at a time, so it is correct for any step, only slower for decode), 'wide'
   * (the vec4 kernel with `decodeWg` threads per workgroup; needs D % 4 == 0 and a kernel created
   * with decodeWg) or 'auto' (default). 'auto' on a kernel with the one-invocation kernels for this
   * D (CPU adapters): 'lanes' for writeKv steps and single tokens, else 'pairs'. Otherwise: 'tiled'
   * when it applies and T >= 16, else 'wide' for a writeKv step when the kernel has it (GPUs),
   * else 'query'.
   */
  variant?: 'auto' | 'query' | 'scalar' | 'lanes' | 'pairs' | 'tiled' | 'wide';
  /**
   * The kernel copies each token's key and value (qkv cols [C, 3C)) to its cache slot itself before
   * attending, so no kv_write dispatch is needed. Only for steps whose tokens are all in different
   * rows (decode: then a token's workgroups are the only ones touching its row); not with 'tiled'.
   */
  writeKv?: boolean;
}

const VARIANTS: ReadonlyArray<NonNullable<AttentionArgs['variant']>> = ['auto', 'query', 'scalar', 'lanes', 'pairs', 'tiled', 'wide'];

/** Tokens per tile of the tiled kernel (its workgroup size / 4 lanes per token). */
const TILE_TOKENS = 8;
/**
 * prefill_lanes: invocations (token pair, head) per workgroup (LANES in the shader). decode_lanes
 * takes AttentionOptions.decodeLanes (default DECODE_LANES): on lavapipe 2-lane workgroups decoded
 * 1.3-1.8x faster than 8-lane ones (batch 1 at positions 128 and 900, batch 4 at 900, batch 16 at
 * 400), while the pairs kernel ran 1.2x faster with 8 (512 tokens).
 */
const PAIR_LANES = 8;
export const DECODE_LANES = 2;

export interface AttentionOptions {
  /**
   * Head size D for which to build `decode_lanes` (variant 'lanes'); it must be a multiple of 4 up
   * to ATTENTION_MAX_HEAD_DIM. Without it there is no 'lanes' variant.
   */
  headDim?: number;
  /**
   * Whether to build `decode_lanes` for headDim. Default: on CPU adapters when headDim fits (a
   * multiple of 4 up to the maximum), where it measured faster than the workgroup-per-token
   * kernel (lavapipe runs shaders with barriers as coroutines).
   */
  lanes?: boolean;
  /**
   * Threads per workgroup of the 'wide' vec4 kernel for decode steps: a power of two in [32, 256].
   * Default: 256 on GPUs (a decode step has only rows x n_head workgroups, so each should hide
   * its own load latency); none on CPU adapters, which decode with 'lanes'. 0: none.
   */
  decodeWg?: number;
  /** Invocations per workgroup of decode_lanes (variant 'lanes'): a power of two in [1, 64]. Default DECODE_LANES (2). */
  decodeLanes?: number;
}

export class AttentionKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly pipeline: GPUComputePipeline,
    private readonly pipelineVec4: GPUComputePipeline,
    private readonly pipelineTiled: GPUComputePipeline,
    private readonly pipelineLanes: GPUComputePipeline | undefined,
    private readonly pipelinePairs: GPUComputePipeline | undefined,
    /** decode_lanes at PAIR_LANES per workgroup: the pairs' second pass, which skips most invocations (in 2-lane workgroups it took 4-12% longer). */
    private readonly pipelineRest: GPUComputePipeline | undefined,
    private readonly pipelineWide: GPUComputePipeline | undefined,
    readonly wg: number,
    /** The head size decode_lanes was built for (variant 'lanes'); undefined: none. */
    readonly lanesHeadDim: number | undefined,
    /** Threads per workgroup of variant 'wide' (decode steps on GPUs); undefined: not built. */
    readonly decodeWg: number | undefined,
    /** Invocations per workgroup of decode_lanes (AttentionOptions.decodeLanes). */
    readonly decodeLanes: number,
  ) {}

  static async create(ctx: GpuContext, opts: AttentionOptions = {}): Promise<AttentionKernel> {
    const { headDim } = opts;
    const fits = headDim !== undefined && Number.isInteger(headDim) && headDim >= 4 && headDim % 4 === 0 && headDim <= ATTENTION_MAX_HEAD_DIM;
    // By default only where it applies (other head sizes keep the workgroup kernels); asked for, it must.
    const lanes = opts.lanes ?? (ctx.isCpuAdapter && fits);
    if (lanes && !fits) {
      throw new InvalidOptionError(`AttentionKernel: headDim for the 'lanes' kernel must be a multiple of 4 in [4, ${ATTENTION_MAX_HEAD_DIM}], got ${headDim}; pass lanes: false for other head sizes`);
    }
    // 32 threads (a power of two for the tree max): on lavapipe smaller workgroups cut the fixed
    // cost per block (measured: prefill T=128 -30%, decode at pos 1000 -35% against 64); it is one
    // warp/SIMD group on most GPUs. Every adapter allows >= 256 invocations, so no clamp is needed.
    const wg = 32;
    const decodeWg = opts.decodeWg ?? (ctx.isCpuAdapter ? 0 : 256);
    if (decodeWg !== 0 && !isPowerOfTwoIn(decodeWg, 32, 256)) {
      throw new InvalidOptionError(`AttentionKernel: decodeWg must be a power of two in [32, 256] (threads per decode workgroup) or 0 for none, got ${decodeWg}`);
    }
    const decodeLanes = opts.decodeLanes ?? DECODE_LANES;
    if (!isPowerOfTwoIn(decodeLanes, 1, 64)) {
      throw new InvalidOptionError(`AttentionKernel: decodeLanes must be a power of two in [1, 64] (invocations per decode_lanes workgroup), got ${decodeLanes}`);
    }
    const [scalar, vec4, tiled, lanesP, pairsP, restP, wide] = await Promise.all([
      ctx.pipeline('attention', 'main', { WG: wg }),
      ctx.pipeline('attention', 'main_vec4', { WG: wg }),
      ctx.pipeline('attention', 'tiled_vec4', { WG: wg }),
      lanes ? ctx.pipeline('attention', 'decode_lanes', { HD4: headDim! / 4, LANES: decodeLanes }) : undefined,
      lanes ? ctx.pipeline('attention', 'prefill_lanes', { HD4: headDim! / 4, LANES: PAIR_LANES }) : undefined,
      lanes ? ctx.pipeline('attention', 'decode_lanes', { HD4: headDim! / 4, LANES: PAIR_LANES }) : undefined,
      decodeWg ? ctx.pipeline('attention', 'main_vec4', { WG: decodeWg }) : undefined,
    ]);
    return new AttentionKernel(ctx, scalar, vec4, tiled, lanesP, pairsP, restP, wide, wg, lanes ? headDim! : undefined, decodeWg || undefined, decodeLanes);
  }

  /**
   * The kernel for steps of one token per row (decode) at head size D: 'lanes' where this kernel
   * has the one-invocation kernels for D (CPU adapters), else 'wide' where it has decodeWg and
   * D % 4 == 0 (GPUs), else 'query'.
   */
  oneQueryVariant(D: number): 'lanes' | 'wide' | 'query' {
    if (D === this.lanesHeadDim) return 'lanes';
    return this.pipelineWide && D % 4 === 0 ? 'wide' : 'query';
  }

  bind(owner: Owned, a: AttentionArgs, label = 'attention'): Dispatch[] {
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
    expectDisjoint(label, 'vCache', a.vCache, { kCache: a.kCache });
    // The caches are bound writable (writeKv), and WebGPU validates usage per buffer, not per range.
    for (const [what, t] of [['qkv', a.qkv], ['meta', a.meta]] as const) {
      for (const [cn, c] of [['kCache', a.kCache], ['vCache', a.vCache]] as const) {
        if (t.buffer === c.buffer) {
          throw new ShapeError(`${label}: ${what} and ${cn} share buffer "${c.buffer.label}"; the caches are bound writable, and WebGPU forbids binding one buffer writable and read-only in the same dispatch: give ${what} its own buffer`);
        }
      }
    }
    const variant = a.variant ?? 'auto';
    if (!VARIANTS.includes(variant)) throw new ShapeError(`${label}: variant must be one of ${VARIANTS.join(', ')}, got ${String(variant)}`);
    const canTile = D % 4 === 0 && D <= 64;
    if (variant === 'tiled' && !canTile) throw new ShapeError(`${label}: the tiled kernel needs D % 4 == 0 and D <= 64, got D = ${D}; use variant 'query'`);
    if (variant === 'tiled' && a.writeKv) throw new ShapeError(`${label}: writeKv (tokens in distinct rows, a decode step) needs the one-query kernels, not variant 'tiled'`);
    const lanesHere = D === this.lanesHeadDim; // CPU adapters: the one-invocation kernels for this D
    const tiled = variant === 'tiled' || (variant === 'auto' && !lanesHere && canTile && T >= 2 * TILE_TOKENS && !a.writeKv);
    if ((variant === 'lanes' || variant === 'pairs') && !lanesHere) {
      throw new ShapeError(`${label}: variant '${variant}' runs head size ${this.lanesHeadDim ?? '(none: the kernel was created without headDim)'} only, got D = ${D}; create the kernel with { headDim: ${D} } or use variant 'query'`);
    }
    if (variant === 'pairs' && a.writeKv) throw new ShapeError(`${label}: writeKv (tokens in distinct rows, a decode step) needs the one-query kernels, not variant 'pairs'`);
    const inputs = [binding(a.qkv), binding(a.meta), binding(a.kCache), binding(a.vCache), binding(a.out)];
    const make = (pipeline: GPUComputePipeline, name: string, workgroups: number, tiledSkip: number, pairsSkip = 0): Dispatch => {
      const [gx, gy] = grid(this.ctx, name, workgroups);
      const params = owner.uniform(`${name}.params`, [T, C, nHead, D, rows, cap, f32bits(1 / Math.sqrt(D)), gx, NAN_BITS, tiledSkip, a.writeKv ? 1 : 0, pairsSkip]);
      const bindGroup = this.ctx.device.createBindGroup({
        label: name,
        layout: pipeline.getBindGroupLayout(0),
        entries: [{ binding: 0, resource: params }, ...inputs.map((resource, i) => ({ binding: i + 1, resource }))],
      });
      return { family: 'attention', label: name, pipeline, bindGroup, workgroups: [gx, gy, 1] };
    };
    if (tiled) {
      // Tiles of one row (prompts) share K/V loads; the second dispatch does the tokens of tiles
      // that mix rows or wrap the ring, one by one, and skips all others.
      return [
        make(this.pipelineTiled, `${label}.tiled`, Math.ceil(T / TILE_TOKENS) * nHead, 0),
        make(this.pipelineVec4, `${label}.rest`, T * nHead, 1),
      ];
    }
    if (variant === 'pairs' || (variant === 'auto' && lanesHere && T >= 2 && !a.writeKv)) {
      // PAIR_LANES (token pair, head) invocations per workgroup: index * PAIR_LANES + lane = pair * nHead + head;
      // then decode_lanes does the tokens of pairs that could not share (and skips all others).
      return [
        make(this.pipelinePairs!, `${label}.pairs`, Math.ceil((Math.ceil(T / 2) * nHead) / PAIR_LANES), 0),
        make(this.pipelineRest!, `${label}.rest`, Math.ceil((T * nHead) / PAIR_LANES), 0, 1),
      ];
    }
    if (variant === 'lanes' || (variant === 'auto' && lanesHere)) {
      // decodeLanes (token, head) pairs per workgroup: workgroup index * decodeLanes + lane = token * nHead + head.
      return [make(this.pipelineLanes!, label, Math.ceil((T * nHead) / this.decodeLanes), 0)];
    }
    if (variant === 'wide' && !this.pipelineWide) throw new ShapeError(`${label}: variant 'wide' needs a kernel created with decodeWg (the default on GPUs only)`);
    if (variant === 'wide' && D % 4 !== 0) throw new ShapeError(`${label}: variant 'wide' is the vec4 kernel and needs D % 4 == 0, got D = ${D}; use variant 'scalar'`);
    if (variant === 'wide' || (variant === 'auto' && a.writeKv && this.pipelineWide && D % 4 === 0)) {
      return [make(this.pipelineWide!, label, T * nHead, 0)];
    }
    // 4 dims per load when head offsets are multiples of 4 (every GPT-2 size: D = 64)
    const vec4 = D % 4 === 0 && variant !== 'scalar';
    return [make(vec4 ? this.pipelineVec4 : this.pipeline, label, T * nHead, 0)];
  }
}
