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
import type { GpuContext } from '../gpu/device.js';
import { InvalidOptionError, ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, f32bits, GpuTensor, isPowerOfTwoIn, Owned } from '../gpu/common.js';
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
   * Scratch of variant 'blocks', sized by `blocksScratch(...)`: `scores` [n_head, capacity, tc] f32
   * (S, then P, per chunk of tc tokens) and `queries` [n_head, D, tc] f32 (the chunk's q,
   * transposed); several layers' dispatches may share them (they run one after another). Without
   * it 'auto' does not pick 'blocks'.
   */
  scratch?: { scores: GpuTensor; queries: GpuTensor };
  /**
   * Which kernel: 'query' (one workgroup per token and head; vec4 loads when D % 4 == 0, else
   * scalar), 'scalar' (the same, always scalar), 'lanes' (one invocation per token and head, no
   * barriers: the kernel's `lanesHeadDim` must equal D), 'pairs' (one invocation per two
   * consecutive tokens and a head, sharing each K/V load when the tokens are neighbours in one row;
   * the same head-size rule; not with writeKv), 'tiled' (8 consecutive tokens x one head per
   * workgroup sharing K/V loads: for prompts; needs D % 4 == 0 and D <= 64; tiles mixing rows fall
   * back to one token at a time, so it is correct for any step, only slower for decode), 'wide'
   * (the vec4 kernel with `decodeWg` threads per workgroup; needs D % 4 == 0 and a kernel created
   * with decodeWg), 'blocks' (CPU adapters, long prompts: blocks of 8 tokens of one row as two
   * matrix products through the `scratch` buffers, the same head-size rule; not with writeKv),
   * 'subgroup' (shaders/attention_subgroups.wgsl: a subgroup per head and query, sharing the
   * head's words and summing the dot products with subgroupAdd; writeKv steps and single tokens
   * take decode_sg, one query per subgroup, other steps prefill_sg, blocks of `sgQueries`
   * consecutive tokens of a row sharing each K/V load, which needs kv_write to have run; the
   * kernel's `subgroupHeadDim` must equal D) or 'auto' (default). 'auto' on a kernel with
   * 'subgroup' for this D (CPU adapters with subgroups): 'subgroup' for every step. Else, on a kernel
   * with the one-invocation kernels for this D (CPU adapters): 'lanes' for writeKv steps and
   * single tokens, 'blocks' for T >= BLOCKS_MIN_T when `scratch` is given, else 'pairs'.
   * Otherwise: 'tiled' when it applies and T >= 16, else 'wide' for a writeKv step when the
   * kernel has it (GPUs), else 'query'.
   */
  variant?: 'auto' | 'query' | 'scalar' | 'lanes' | 'pairs' | 'tiled' | 'wide' | 'blocks' | 'subgroup';
  /**
   * The kernel copies each token's key and value (qkv cols [C, 3C)) to its cache slot itself before
   * attending, so no kv_write dispatch is needed. Only for steps whose tokens are all in different
   * rows (decode: then a token's workgroups are the only ones touching its row); not with 'tiled'.
   */
  writeKv?: boolean;
}

const VARIANTS: ReadonlyArray<NonNullable<AttentionArgs['variant']>> = [
  'auto',
  'query',
  'scalar',
  'lanes',
  'pairs',
  'tiled',
  'wide',
  'blocks',
  'subgroup',
];

/** Tokens per block of variant 'blocks' (QB in the shader); chunks start at multiples of it. */
const BLOCK_TOKENS = 8;
/** att_scores / att_pv lanes per workgroup (BL); att_qt and att_softmax take LANES = this too. */
const BLOCK_LANES = 8;
/** Bytes the 'blocks' score scratch may take (less where the binding limit is lower): chunks of tokens beyond. */
export const BLOCKS_SCRATCH_BYTES = 64 * 1024 * 1024;
/** Prompts of at least this many tokens take 'blocks' under 'auto' (CPU adapters). */
export const BLOCKS_MIN_T = 64;

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
/**
 * Invocations per (token, head) of decode_sg (SGA in shaders/attention_subgroups.wgsl): on
 * lavapipe (8-lane subgroups) 4 ran decode attention 1.5-2x faster than decode_lanes at batch
 * 16-64 (a subgroup of 8: 1.2-1.5x; at batch 1 8 was slightly faster, where attention is a small
 * part of a step); SwiftShader's subgroups are 4 lanes. A device needs subgroups of at least this
 * many invocations for 'subgroup'.
 */
export const SG_LANES = 4;
/**
 * prefill_sg's invocations per workgroup and its queries per workgroup (QS) are both the device's
 * subgroup size up to this: on lavapipe 8 and 8 (~3x the pairs kernel for 32 tokens after 500)
 * beat 4 and 4, 8 and 4 (~2x) and 8 and 2; at D 64, 8 queries x 2 head words per invocation
 * hold q and the accumulators in 2 x 16 vec4, as 4 queries x 4 words do.
 */
export const SG_PROMPT_MAX = 8;

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
  /**
   * Most bytes of one chunk's score scratch for variant 'blocks' (tokens beyond go in further
   * chunks): at least 8 tokens' worth is always allowed. Default BLOCKS_SCRATCH_BYTES (64 MiB),
   * capped by the binding limit.
   */
  blocksScratchBytes?: number;
  /**
   * Whether to build variant 'blocks' (long prompts as matrix products) beside the lanes kernels.
   * Default: with them (CPU adapters) where 'subgroup' is not built (which 'auto' prefers); true
   * needs the lanes kernels.
   */
  blocks?: boolean;
  /**
   * Whether to build variant 'subgroup' (decode_sg and prefill_sg, shaders/attention_subgroups.wgsl)
   * for headDim: one subgroup per (query or block of queries, head). Needs the `subgroups`
   * feature with a single subgroup size of at least SG_LANES and a headDim as for 'lanes'.
   * Default: where the lanes kernels are built (CPU adapters) and the device has such subgroups
   * (lavapipe, SwiftShader); 'auto' then takes it for every step.
   */
  subgroups?: boolean;
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
    /** Variant 'blocks' (built with the lanes kernels): its three passes. */
    private readonly pipelinesBlocks:
      | { qt: GPUComputePipeline; scores: GPUComputePipeline; softmax: GPUComputePipeline; pv: GPUComputePipeline }
      | undefined,
    /** AttentionOptions.blocksScratchBytes. */
    readonly blocksScratchBytes: number,
    /** Variant 'subgroup': decode_sg and prefill_sg, built for head size subgroupHeadDim. */
    private readonly pipelinesSg: { decode: GPUComputePipeline; prompt: GPUComputePipeline } | undefined,
    /** The head size variant 'subgroup' was built for; undefined: none. */
    readonly subgroupHeadDim: number | undefined,
    /** prefill_sg's queries per workgroup (QS); 0 without 'subgroup'. */
    readonly sgQueries: number,
  ) {}

  static async create(ctx: GpuContext, opts: AttentionOptions = {}): Promise<AttentionKernel> {
    const { headDim } = opts;
    const fits =
      headDim !== undefined &&
      Number.isInteger(headDim) &&
      headDim >= 4 &&
      headDim % 4 === 0 &&
      headDim <= ATTENTION_MAX_HEAD_DIM;
    // By default only where it applies (other head sizes keep the workgroup kernels); asked for, it must.
    const lanes = opts.lanes ?? (ctx.isCpuAdapter && fits);
    if (lanes && !fits) {
      throw new InvalidOptionError(
        `AttentionKernel: headDim for the 'lanes' kernel must be a multiple of 4 in [4, ${ATTENTION_MAX_HEAD_DIM}], got ${headDim}; pass lanes: false for other head sizes`,
      );
    }
    // 32 threads (a power of two for the tree max): on lavapipe smaller workgroups cut the fixed
    // cost per block (measured: prefill T=128 -30%, decode at pos 1000 -35% against 64); it is one
    // warp/SIMD group on most GPUs. Every adapter allows >= 256 invocations, so no clamp is needed.
    const wg = 32;
    const decodeWg = opts.decodeWg ?? (ctx.isCpuAdapter ? 0 : 256);
    if (decodeWg !== 0 && !isPowerOfTwoIn(decodeWg, 32, 256)) {
      throw new InvalidOptionError(
        `AttentionKernel: decodeWg must be a power of two in [32, 256] (threads per decode workgroup) or 0 for none, got ${decodeWg}`,
      );
    }
    const decodeLanes = opts.decodeLanes ?? DECODE_LANES;
    if (!isPowerOfTwoIn(decodeLanes, 1, 64)) {
      throw new InvalidOptionError(
        `AttentionKernel: decodeLanes must be a power of two in [1, 64] (invocations per decode_lanes workgroup), got ${decodeLanes}`,
      );
    }
    const blocksScratchBytes = opts.blocksScratchBytes ?? BLOCKS_SCRATCH_BYTES;
    if (!Number.isInteger(blocksScratchBytes) || blocksScratchBytes < 1) {
      throw new InvalidOptionError(
        `AttentionKernel: blocksScratchBytes must be a positive integer (bytes of the 'blocks' score scratch per chunk), got ${blocksScratchBytes}`,
      );
    }
    if (opts.subgroups !== undefined && typeof opts.subgroups !== 'boolean') {
      throw new InvalidOptionError(`AttentionKernel: subgroups must be a boolean, got ${String(opts.subgroups)}`);
    }
    // A workgroup of SG_LANES (or sgLanes) invocations must be one subgroup (subgroupAdd sums the subgroup).
    const sgSize = ctx.features.subgroupSize;
    const sgFits = ctx.features.subgroups && sgSize !== null && sgSize >= SG_LANES;
    const sg = opts.subgroups ?? (lanes && sgFits);
    if (sg && !(fits && sgFits)) {
      throw new InvalidOptionError(
        `AttentionKernel: subgroups needs the 'subgroups' feature with a single subgroup size of at least ${SG_LANES} and a headDim that is a multiple of 4 in [4, ${ATTENTION_MAX_HEAD_DIM}]; here subgroups ${ctx.features.subgroups}, subgroup size ${sgSize ?? 'not a single size'}, headDim ${String(headDim)}`,
      );
    }
    const sgLanes = sg ? Math.min(SG_PROMPT_MAX, sgSize!) : 0; // prefill_sg: invocations = queries per workgroup
    if (opts.blocks !== undefined && typeof opts.blocks !== 'boolean')
      throw new InvalidOptionError(`AttentionKernel: blocks must be a boolean, got ${String(opts.blocks)}`);
    const blocks = opts.blocks ?? (lanes && !sg);
    if (blocks && !lanes)
      throw new InvalidOptionError(
        `AttentionKernel: blocks: true needs the lanes kernels (lanes: true, a headDim that fits), which this kernel does not build (lanes ${String(opts.lanes)}, headDim ${String(headDim)})`,
      );
    const [scalar, vec4, tiled, lanesP, pairsP, restP, wide, qtP, scoresP, softmaxP, pvP, sgDecodeP, sgPromptP] =
      await Promise.all([
        ctx.pipeline('attention', 'main', { WG: wg }),
        ctx.pipeline('attention', 'main_vec4', { WG: wg }),
        ctx.pipeline('attention', 'tiled_vec4', { WG: wg }),
        lanes ? ctx.pipeline('attention', 'decode_lanes', { HD4: headDim! / 4, LANES: decodeLanes }) : undefined,
        lanes ? ctx.pipeline('attention', 'prefill_lanes', { HD4: headDim! / 4, LANES: PAIR_LANES }) : undefined,
        lanes ? ctx.pipeline('attention', 'decode_lanes', { HD4: headDim! / 4, LANES: PAIR_LANES }) : undefined,
        decodeWg ? ctx.pipeline('attention', 'main_vec4', { WG: decodeWg }) : undefined,
        blocks ? ctx.pipeline('attention', 'att_qt', { LANES: BLOCK_LANES }) : undefined,
        blocks ? ctx.pipeline('attention', 'att_scores', {}) : undefined,
        blocks ? ctx.pipeline('attention', 'att_softmax', { LANES: BLOCK_LANES }) : undefined,
        blocks ? ctx.pipeline('attention', 'att_pv', {}) : undefined,
        sg
          ? ctx.pipeline('attention+attention_subgroups', 'decode_sg', {
              HD4: headDim! / 4,
              SGA: SG_LANES,
              WPL: Math.ceil(headDim! / 4 / SG_LANES),
            })
          : undefined,
        sg
          ? ctx.pipeline('attention+attention_subgroups', 'prefill_sg', {
              HD4: headDim! / 4,
              SGA: sgLanes,
              WPL: Math.ceil(headDim! / 4 / sgLanes),
              QS: sgLanes,
            })
          : undefined,
      ]);
    const sgP = sgDecodeP && sgPromptP ? { decode: sgDecodeP, prompt: sgPromptP } : undefined;
    const blocksP =
      qtP && scoresP && softmaxP && pvP ? { qt: qtP, scores: scoresP, softmax: softmaxP, pv: pvP } : undefined;
    return new AttentionKernel(
      ctx,
      scalar,
      vec4,
      tiled,
      lanesP,
      pairsP,
      restP,
      wide,
      wg,
      lanes ? headDim! : undefined,
      decodeWg || undefined,
      decodeLanes,
      blocksP,
      blocksScratchBytes,
      sgP,
      sg ? headDim! : undefined,
      sgLanes,
    );
  }

  /**
   * The scratch variant 'blocks' needs for T tokens over a cache of `cap` slots, width C, nHead
   * heads: tokens go in chunks of `tc` (a multiple of 8) so that the scores [nHead, cap, tc] f32
   * stay within blocksScratchBytes and the binding limit; `scores` and `queries` ([nHead, D, tc] =
   * C x tc) are the two buffers' f32 counts. All 0 where this kernel has no 'blocks' for head size
   * C / nHead (not a CPU adapter's kernel, or another head size).
   */
  blocksScratch(T: number, cap: number, C: number, nHead: number): { scores: number; queries: number; tc: number } {
    if (!this.pipelinesBlocks || C / nHead !== this.lanesHeadDim) return { scores: 0, queries: 0, tc: 0 };
    const budget = Math.min(this.blocksScratchBytes, this.ctx.limits.maxStorageBufferBindingSize);
    const perToken = nHead * cap * 4;
    const fit = Math.max(BLOCK_TOKENS, Math.floor(budget / perToken / BLOCK_TOKENS) * BLOCK_TOKENS);
    const tc = Math.min(Math.ceil(T / BLOCK_TOKENS) * BLOCK_TOKENS, fit);
    return { scores: nHead * cap * tc, queries: C * tc, tc };
  }

  /**
   * The kernel for steps of one token per row (decode) at head size D: 'subgroup' (decode_sg)
   * where this kernel has it for D, else 'lanes' where it has the one-invocation kernels for D (CPU
   * adapters), else 'wide' where it has decodeWg and D % 4 == 0 (GPUs), else 'query': what 'auto'
   * picks for a writeKv step.
   */
  oneQueryVariant(D: number): 'subgroup' | 'lanes' | 'wide' | 'query' {
    return this.resolveVariant(1, D, { writeKv: true }) as 'subgroup' | 'lanes' | 'wide' | 'query';
  }

  /**
   * The kernel `bind` runs for T tokens at head size D (AttentionArgs.variant resolved; 'query'
   * takes vec4 loads when D % 4 == 0): given variants are checked against what this kernel has,
   * 'auto' picks as AttentionArgs.variant says (`scratch`: whether a 'blocks' scratch is given).
   */
  resolveVariant(
    T: number,
    D: number,
    o: { variant?: AttentionArgs['variant']; writeKv?: boolean; scratch?: boolean },
    label = 'attention',
  ): Exclude<NonNullable<AttentionArgs['variant']>, 'auto'> {
    const variant = o.variant ?? 'auto';
    if (!VARIANTS.includes(variant))
      throw new ShapeError(`${label}: variant must be one of ${VARIANTS.join(', ')}, got ${String(variant)}`);
    const canTile = D % 4 === 0 && D <= 64;
    const lanesHere = D === this.lanesHeadDim; // CPU adapters: the one-invocation kernels for this D
    const oneQuery =
      variant === 'lanes' ||
      variant === 'subgroup' ||
      variant === 'wide' ||
      variant === 'query' ||
      variant === 'scalar';
    if (variant === 'tiled' && !canTile)
      throw new ShapeError(
        `${label}: the tiled kernel needs D % 4 == 0 and D <= 64, got D = ${D}; use variant 'query'`,
      );
    if ((variant === 'lanes' || variant === 'pairs' || variant === 'blocks') && !lanesHere) {
      throw new ShapeError(
        `${label}: variant '${variant}' runs head size ${this.lanesHeadDim ?? '(none: the kernel was created without headDim)'} only, got D = ${D}; create the kernel with { headDim: ${D} } or use variant 'query'`,
      );
    }
    if (o.writeKv && variant !== 'auto' && !oneQuery)
      throw new ShapeError(
        `${label}: writeKv (tokens in distinct rows, a decode step) needs the one-query kernels, not variant '${variant}'`,
      );
    if (variant === 'subgroup' && D !== this.subgroupHeadDim) {
      throw new ShapeError(
        `${label}: variant 'subgroup' runs head size ${this.subgroupHeadDim ?? '(none: the kernel was created without subgroups)'} only, got D = ${D}; create the kernel with { headDim: ${D}, subgroups: true } or use variant 'query'`,
      );
    }
    if (variant === 'blocks' && !this.pipelinesBlocks)
      throw new ShapeError(
        `${label}: variant 'blocks' needs a kernel built with it (AttentionOptions.blocks, the default with the lanes kernels); this one was created with blocks: false`,
      );
    if (variant === 'wide' && !this.pipelineWide)
      throw new ShapeError(`${label}: variant 'wide' needs a kernel created with decodeWg (the default on GPUs only)`);
    if (variant === 'wide' && D % 4 !== 0)
      throw new ShapeError(
        `${label}: variant 'wide' is the vec4 kernel and needs D % 4 == 0, got D = ${D}; use variant 'scalar'`,
      );
    if (variant !== 'auto') return variant;
    if (D === this.subgroupHeadDim) return 'subgroup';
    if (!o.writeKv) {
      if (!lanesHere && canTile && T >= 2 * TILE_TOKENS) return 'tiled';
      if (lanesHere && this.pipelinesBlocks && o.scratch && T >= BLOCKS_MIN_T) return 'blocks';
      if (lanesHere && T >= 2) return 'pairs';
    }
    if (lanesHere) return 'lanes';
    if (o.writeKv && this.pipelineWide && D % 4 === 0) return 'wide';
    return 'query';
  }

  bind(owner: Owned, a: AttentionArgs, label = 'attention'): Dispatch[] {
    if (a.kCache.shape.length !== 3)
      throw new ShapeError(`${label}: kCache must be 3-D [rows, capacity, C], got [${a.kCache.shape.join(', ')}]`);
    const [rows, cap, C] = a.kCache.shape as [number, number, number];
    if (a.qkv.shape.length !== 2)
      throw new ShapeError(`${label}: qkv must be 2-D [T, 3C], got [${a.qkv.shape.join(', ')}]`);
    const T = a.qkv.shape[0]!;
    const nHead = a.nHead;
    if (!Number.isInteger(nHead) || nHead < 1 || C % nHead !== 0) {
      throw new ShapeError(`${label}: nHead must be a positive divisor of C = ${C}, got ${nHead}`);
    }
    const D = C / nHead;
    if (D > ATTENTION_MAX_HEAD_DIM)
      throw new ShapeError(
        `${label}: head size ${D} (C ${C} / nHead ${nHead}) passes the kernel's maximum ${ATTENTION_MAX_HEAD_DIM}`,
      );
    expectTensor(`${label} kCache`, a.kCache, [rows, cap, C], ['f32']);
    expectTensor(`${label} vCache`, a.vCache, [rows, cap, C], ['f32']);
    expectTensor(`${label} qkv`, a.qkv, [T, 3 * C], ['f32']);
    expectTensor(`${label} meta`, a.meta, [T, 2], ['u32']);
    expectTensor(`${label} out`, a.out, [T, C], ['f32']);
    expectDisjoint(label, 'out', a.out, { qkv: a.qkv, kCache: a.kCache, vCache: a.vCache, meta: a.meta });
    expectDisjoint(label, 'vCache', a.vCache, { kCache: a.kCache });
    // The caches are bound writable (writeKv), and WebGPU validates usage per buffer, not per range.
    for (const [what, t] of [
      ['qkv', a.qkv],
      ['meta', a.meta],
    ] as const) {
      for (const [cn, c] of [
        ['kCache', a.kCache],
        ['vCache', a.vCache],
      ] as const) {
        if (t.buffer === c.buffer) {
          throw new ShapeError(
            `${label}: ${what} and ${cn} share buffer "${c.buffer.label}"; the caches are bound writable, and WebGPU forbids binding one buffer writable and read-only in the same dispatch: give ${what} its own buffer`,
          );
        }
      }
    }
    const v = this.resolveVariant(
      T,
      D,
      { variant: a.variant, writeKv: a.writeKv, scratch: a.scratch !== undefined },
      label,
    );
    // [binding, resource]: params at 0, then qkv, meta, kCache, vCache, out (every entry point but
    // the blocks passes uses them all; an 'auto' layout holds only the bindings a shader uses).
    const inputs: Array<[number, GPUBindingResource]> = [
      [1, binding(a.qkv)],
      [2, binding(a.meta)],
      [3, binding(a.kCache)],
      [4, binding(a.vCache)],
      [5, binding(a.out)],
    ];
    const make = (
      pipeline: GPUComputePipeline,
      name: string,
      workgroups: number,
      tiledSkip: number,
      pairsSkip = 0,
      chunk = { tBase: 0, tc: 0 },
      resources = inputs,
    ): Dispatch => {
      const [gx, gy] = grid(this.ctx, name, workgroups);
      const params = owner.uniform(`${name}.params`, [
        T,
        C,
        nHead,
        D,
        rows,
        cap,
        f32bits(1 / Math.sqrt(D)),
        gx,
        NAN_BITS,
        tiledSkip,
        a.writeKv ? 1 : 0,
        pairsSkip,
        chunk.tBase,
        chunk.tc,
      ]);
      const bindGroup = this.ctx.device.createBindGroup({
        label: name,
        layout: pipeline.getBindGroupLayout(0),
        entries: [{ binding: 0, resource: params }, ...resources.map(([b, resource]) => ({ binding: b, resource }))],
      });
      return { family: 'attention', label: name, pipeline, bindGroup, workgroups: [gx, gy, 1] };
    };
    if (v === 'tiled') {
      // Tiles of one row (prompts) share K/V loads; the second dispatch does the tokens of tiles
      // that mix rows or wrap the ring, one by one, and skips all others.
      return [
        make(this.pipelineTiled, `${label}.tiled`, Math.ceil(T / TILE_TOKENS) * nHead, 0),
        make(this.pipelineVec4, `${label}.rest`, T * nHead, 1),
      ];
    }
    if (v === 'blocks') {
      const need = this.blocksScratch(T, cap, C, nHead);
      const hint = `(blocksScratch(${T}, ${cap}, ${C}, ${nHead}): ${need.scores} and ${need.queries} f32)`;
      if (!a.scratch)
        throw new ShapeError(`${label}: variant 'blocks' needs scratch buffers for the scores and the queries ${hint}`);
      for (const [what, t, floats] of [
        ['scores', a.scratch.scores, need.scores],
        ['queries', a.scratch.queries, need.queries],
      ] as const) {
        const have = t.shape.reduce((x, y) => x * y, 1);
        if (t.dtype !== 'f32' || have < floats)
          throw new ShapeError(
            `${label}: the ${what} scratch holds ${have} ${t.dtype}, variant 'blocks' needs ${floats} f32 for ${T} tokens ${hint}`,
          );
        expectDisjoint(label, `${what} scratch`, t, {
          qkv: a.qkv,
          kCache: a.kCache,
          vCache: a.vCache,
          meta: a.meta,
          out: a.out,
        });
      }
      expectDisjoint(label, 'scores scratch', a.scratch.scores, { queries: a.scratch.queries });
      const b = this.pipelinesBlocks!;
      // Bindings each pass uses (an 'auto' layout has only those): qt qkv -> queries (7); scores
      // meta, kCache, queries -> scores (6); softmax meta, scores; pv meta, vCache, scores -> out.
      const use = (...bs: number[]): Array<[number, GPUBindingResource]> =>
        [
          ...inputs,
          [6, binding(a.scratch!.scores)] as [number, GPUBindingResource],
          [7, binding(a.scratch!.queries)] as [number, GPUBindingResource],
        ].filter(([n]) => bs.includes(n));
      const { tc } = need;
      const d: Dispatch[] = [];
      // Per chunk of tc tokens: q transposed, scores, softmax, P V; then decode_lanes for the
      // tokens of blocks that do not qualify (it skips all others).
      for (let t0 = 0; t0 < T; t0 += tc) {
        const n = Math.min(tc, T - t0);
        const chunk = { tBase: t0, tc };
        d.push(make(b.qt, `${label}.qt`, Math.ceil((tc * nHead) / BLOCK_LANES), 0, 0, chunk, use(1, 7)));
        d.push(
          make(
            b.scores,
            `${label}.scores`,
            Math.ceil(n / (BLOCK_TOKENS * BLOCK_LANES)) * nHead,
            0,
            0,
            chunk,
            use(2, 3, 6, 7),
          ),
        );
        d.push(make(b.softmax, `${label}.softmax`, Math.ceil((tc * nHead) / BLOCK_LANES), 0, 0, chunk, use(2, 6)));
        d.push(make(b.pv, `${label}.pv`, Math.ceil(n / BLOCK_TOKENS) * nHead, 0, 0, chunk, use(2, 4, 5, 6)));
      }
      d.push(make(this.pipelineRest!, `${label}.rest`, Math.ceil((T * nHead) / PAIR_LANES), 0, 2));
      return d;
    }
    if (v === 'pairs') {
      // PAIR_LANES (token pair, head) invocations per workgroup: index * PAIR_LANES + lane = pair * nHead + head;
      // then decode_lanes does the tokens of pairs that could not share (and skips all others).
      return [
        make(this.pipelinePairs!, `${label}.pairs`, Math.ceil((Math.ceil(T / 2) * nHead) / PAIR_LANES), 0),
        make(this.pipelineRest!, `${label}.rest`, Math.ceil((T * nHead) / PAIR_LANES), 0, 1),
      ];
    }
    if (v === 'subgroup') {
      // decode steps and single tokens: one workgroup (one subgroup) per (token, head), index =
      // token * nHead + head; prompts: one per (block of sgQueries tokens, head).
      if (a.writeKv || T === 1) return [make(this.pipelinesSg!.decode, label, T * nHead, 0)];
      return [make(this.pipelinesSg!.prompt, `${label}.sg`, Math.ceil(T / this.sgQueries) * nHead, 0)];
    }
    if (v === 'lanes') {
      // decodeLanes (token, head) pairs per workgroup: workgroup index * decodeLanes + lane = token * nHead + head.
      return [make(this.pipelineLanes!, label, Math.ceil((T * nHead) / this.decodeLanes), 0)];
    }
    if (v === 'wide') {
      return [make(this.pipelineWide!, label, T * nHead, 0)];
    }
    // 4 dims per load when head offsets are multiples of 4 (every GPT-2 size: D = 64)
    const vec4 = D % 4 === 0 && v !== 'scalar';
    return [make(vec4 ? this.pipelineVec4 : this.pipeline, label, T * nHead, 0)];
  }
}
