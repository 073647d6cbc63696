/**
 * Causal multi-head attention over the KV cache (shaders/attention.wgsl + attention_prompt.wgsl,
 * attention_subgroups.wgsl), for prefill (many tokens of one or several rows) and decode (one
 * token per row).
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
 *
 * Which kernels run is the device profile's choice (AttentionProfile, set in profile.ts): one for
 * decode steps and one family for prompts. A kernel is built for one head size and builds the
 * pipelines of those two choices only; a choice that cannot run that head size falls back to
 * 'query' (see fitTo). It is also built for one cache dtype (AttentionOptions.kvDtype): f16 caches
 * (halves packed two per u32 word, read through unpack2x16float) take the same kernels with the
 * override KV_F16 set, for head sizes D % 8 == 0 (a head's slice of a slot is then whole 16-byte
 * words: no two workgroups write one word).
 */
import type { GpuContext } from '../gpu/device.js';
import { InvalidOptionError, ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, f32bits, GpuTensor, isPowerOfTwoIn, Owned } from '../gpu/common.js';
import { expectDisjoint, grid, NAN_BITS } from './elementwise.js';
import { KV_DTYPES, type KvDtype } from './kvcache.js';

/** Largest head size the kernels' arrays hold. */
export const ATTENTION_MAX_HEAD_DIM = 256;

/**
 * The kernels, per (token or block of tokens, head):
 *   'query'     main_vec4 (main where D % 4 != 0): a 32-thread workgroup per token, any step;
 *   'wide'      main_vec4 with `decodeWg` threads: decode on GPUs (few workgroups, each hiding its
 *               own load latency); D % 4 == 0;
 *   'lanes'     decode_lanes: one invocation per token, no barriers (CPU adapters);
 *   'pairs'     prefill_lanes: one invocation per two consecutive tokens of a row, sharing each K/V
 *               load, then decode_lanes for the tokens of pairs that do not qualify;
 *   'blocks'    blocks of 8 tokens of a row as two matrix products through the `scratch` buffers
 *               (long prompts on CPU adapters without subgroups), then decode_lanes for the rest;
 *   'tiled'     tiled_vec4: 8 consecutive tokens of a row per workgroup sharing K/V loads through
 *               workgroup memory (prompts on GPUs; D % 4 == 0, D <= 64), then 'query' for the rest;
 *   'subgroup'  a subgroup per (token, head) for decode steps and single tokens (decode_sg, 4
 *               invocations; where the profile's decode is 'subgroup') or per block of
 *               `subgroupLanes` tokens of a row (prefill_sg), sharing K/V words and summing with
 *               subgroupAdd (CPU adapters with subgroups).
 * 'lanes', 'pairs', 'blocks' and 'subgroup' need D % 4 == 0, D <= ATTENTION_MAX_HEAD_DIM.
 */
export type AttentionVariant = 'query' | 'wide' | 'lanes' | 'pairs' | 'blocks' | 'tiled' | 'subgroup';

/** The device profile's attention choices. */
export interface AttentionProfile {
  /** Decode steps (one token per row, writing its own K/V): 'wide', 'lanes', 'subgroup' or 'query'. */
  decode: 'wide' | 'lanes' | 'subgroup' | 'query';
  /**
   * Prompt steps (runs of tokens of a row): 'tiled' (from TILED_MIN_T tokens, 'query' below),
   * 'blocks' (from BLOCKS_MIN_T tokens given a scratch, 'pairs' below), 'pairs' (one token:
   * 'lanes'), 'subgroup' (one token: 'lanes') or 'query'.
   */
  prompt: 'tiled' | 'pairs' | 'blocks' | 'subgroup' | 'query';
  /** 'wide': threads per workgroup, a power of two in [32, 256]. */
  decodeWg: number;
  /** 'subgroup' prompts: invocations of prefill_sg = its queries per workgroup, 4 or 8, at most the device's subgroup size. */
  subgroupLanes: number;
}

export interface AttentionArgs {
  qkv: GpuTensor; // [T, 3C] f32
  kCache: GpuTensor; // [rows, cap, C] of the kernel's kvDtype (f32, or f16: C / 2 words per slot)
  vCache: GpuTensor; // [rows, cap, C] of the kernel's kvDtype
  meta: GpuTensor; // [T, 2] u32 (row, pos)
  out: GpuTensor; // [T, C] f32, disjoint from the inputs
  nHead: number;
  /**
   * Scratch of variant 'blocks', sized by `blocksScratch(...)`: `scores` [n_head, capacity, tc] f32
   * (S, then P, per chunk of tc tokens) and `queries` [n_head, D, tc] f32 (the chunk's q,
   * transposed); several layers' dispatches may share them (they run one after another). Without
   * it the profile's 'blocks' prompts take 'pairs'.
   */
  scratch?: { scores: GpuTensor; queries: GpuTensor };
  /**
   * Which kernel (one this kernel built; see AttentionVariant); default: the profile's for the step
   * (variantFor). 'pairs', 'blocks' and 'tiled' need kv_write to have run (not with writeKv).
   */
  variant?: AttentionVariant;
  /**
   * The kernel copies each token's key and value (qkv cols [C, 3C)) to its cache slot itself before
   * attending, so no kv_write dispatch is needed. Only for steps whose tokens are all in different
   * rows (decode: then a token's workgroups are the only ones touching its row); only with the
   * one-query kernels ('query', 'wide', 'lanes').
   */
  writeKv?: boolean;
}

const ONE_QUERY: ReadonlySet<AttentionVariant> = new Set(['query', 'wide', 'lanes', 'subgroup']);

/** Tokens per block of variant 'blocks' (QB in the shader); chunks start at multiples of it. */
const BLOCK_TOKENS = 8;
/** att_scores / att_pv lanes per workgroup (BL); att_qt and att_softmax take LANES = this too. */
const BLOCK_LANES = 8;
/** Bytes the 'blocks' score scratch may take (less where the binding limit is lower): chunks of tokens beyond. */
export const BLOCKS_SCRATCH_BYTES = 64 * 1024 * 1024;
/** Prompts of at least this many tokens take 'blocks' where the profile says so (given a scratch). */
export const BLOCKS_MIN_T = 64;
/** Prompts of at least this many tokens take 'tiled' where the profile says so (two tiles). */
export const TILED_MIN_T = 16;
/** Tokens per tile of the tiled kernel (its workgroup size / 4 lanes per token). */
const TILE_TOKENS = 8;
/** Threads per workgroup of 'query' (a power of two for the tree max; one warp / SIMD group on most GPUs). */
const QUERY_WG = 32;
/** Invocations per workgroup (LANES) of decode_lanes after 'pairs' / 'blocks' / 'subgroup' prompts, and of prefill_lanes. */
const LANES = 8;
/**
 * LANES of decode_lanes for the 'lanes' variant (decode steps, one-token prompts): few (row, head)
 * pairs per step, so small workgroups spread them over the cores (BENCHMARKS.md, decision log).
 */
const DECODE_LANES = 2;
/** Invocations per (token, head) of decode_sg (SGA); decode 'subgroup' needs device subgroups of at least this. */
export const SG_DECODE_LANES = 4;

/** Whether the one-invocation and subgroup kernels run head size D (their head loops are unrolled to D / 4). */
export function lanesFit(D: number): boolean {
  return Number.isInteger(D) && D >= 4 && D % 4 === 0 && D <= ATTENTION_MAX_HEAD_DIM;
}

/** The profile's choices for head size D: a choice that cannot run D falls back to 'query'. */
export function fitTo(p: AttentionProfile, D: number): Pick<AttentionProfile, 'decode' | 'prompt'> {
  const lanes = lanesFit(D);
  const decode = p.decode === 'wide' ? D % 4 === 0 : p.decode === 'query' || lanes;
  const prompt = p.prompt === 'tiled' ? D % 4 === 0 && D <= 64 : p.prompt === 'query' || lanes;
  return { decode: decode ? p.decode : 'query', prompt: prompt ? p.prompt : 'query' };
}

/** Checks an AttentionProfile (every field present) and that the device can run it; throws InvalidOptionError naming the field. */
export function checkAttentionProfile(ctx: GpuContext, p: AttentionProfile, where = 'attention'): void {
  const bad = (field: string, what: string, got: unknown) =>
    new InvalidOptionError(`${where}.${field} must be ${what}, got ${JSON.stringify(got)}`);
  if (!['wide', 'lanes', 'subgroup', 'query'].includes(p.decode))
    throw bad('decode', "'wide', 'lanes', 'subgroup' or 'query'", p.decode);
  if (!['tiled', 'pairs', 'blocks', 'subgroup', 'query'].includes(p.prompt))
    throw bad('prompt', "'tiled', 'pairs', 'blocks', 'subgroup' or 'query'", p.prompt);
  if (!isPowerOfTwoIn(p.decodeWg, 32, 256)) throw bad('decodeWg', 'a power of two in [32, 256]', p.decodeWg);
  if (p.subgroupLanes !== 4 && p.subgroupLanes !== 8) throw bad('subgroupLanes', '4 or 8', p.subgroupLanes);
  const size = ctx.features.subgroupSize;
  // A workgroup of subgroupLanes (SG_DECODE_LANES) invocations must be one subgroup: subgroupAdd sums the subgroup.
  if (p.prompt === 'subgroup' && !(ctx.features.subgroups && size !== null && size >= p.subgroupLanes)) {
    throw new InvalidOptionError(
      `${where}.prompt 'subgroup' needs the 'subgroups' feature with a single subgroup size of at least subgroupLanes ${p.subgroupLanes}; here subgroups ${ctx.features.subgroups}, subgroup size ${size ?? 'not a single size'}. Use 'blocks' or 'pairs' (CPU adapters) or 'tiled'`,
    );
  }
  if (p.decode === 'subgroup' && !(ctx.features.subgroups && size !== null && size >= SG_DECODE_LANES)) {
    throw new InvalidOptionError(
      `${where}.decode 'subgroup' needs the 'subgroups' feature with a single subgroup size of at least ${SG_DECODE_LANES}; here subgroups ${ctx.features.subgroups}, subgroup size ${size ?? 'not a single size'}. Use 'lanes' (CPU adapters) or 'wide'`,
    );
  }
}

export interface AttentionOptions extends AttentionProfile {
  /** The head size D = C / n_head every bind must have. */
  headDim: number;
  /** Most bytes of one chunk's 'blocks' score scratch (at least 8 tokens' worth); default BLOCKS_SCRATCH_BYTES, capped by the binding limit. */
  blocksScratchBytes?: number;
  /** The dtype of the caches every bind reads: 'f32' (default) or 'f16' (needs headDim % 8 == 0). */
  kvDtype?: KvDtype;
}

/** Whether a cache of `dtype` can serve attention at head size D (f16: D % 8 == 0, see the file header). */
export function kvDtypeFits(dtype: KvDtype, D: number): boolean {
  return dtype === 'f32' || (Number.isInteger(D) && D >= 8 && D % 8 === 0 && D <= ATTENTION_MAX_HEAD_DIM);
}

/** The pipelines a kernel may hold, by the role they play. */
type Role =
  | 'query'
  | 'wide'
  | 'lanes'
  | 'decodeLanes'
  | 'pairs'
  | 'tiled'
  | 'qt'
  | 'scores'
  | 'softmax'
  | 'pv'
  | 'sgDecode'
  | 'sgPrompt';

/** What a variant's dispatches need, besides the step. */
interface Step {
  T: number;
  C: number;
  nHead: number;
  rows: number;
  cap: number;
  writeKv: boolean;
}

export class AttentionKernel {
  private constructor(
    private readonly ctx: GpuContext,
    /** The head size every bind has. */
    readonly headDim: number,
    /** The kernels it runs for decode steps and prompts (the profile's, fitted to headDim). */
    readonly decode: AttentionProfile['decode'],
    readonly prompt: AttentionProfile['prompt'],
    private readonly pipes: Partial<Record<Role, GPUComputePipeline>>,
    /** prefill_sg's queries per workgroup (QS). */
    readonly sgQueries: number,
    /** AttentionOptions.blocksScratchBytes. */
    readonly blocksScratchBytes: number,
    /** The dtype of the caches it reads and writes. */
    readonly kvDtype: KvDtype,
  ) {}

  static async create(ctx: GpuContext, opts: AttentionOptions): Promise<AttentionKernel> {
    const D = opts.headDim;
    if (!(Number.isInteger(D) && D >= 1 && D <= ATTENTION_MAX_HEAD_DIM))
      throw new InvalidOptionError(
        `AttentionKernel: headDim must be an integer in [1, ${ATTENTION_MAX_HEAD_DIM}], got ${D}`,
      );
    checkAttentionProfile(ctx, opts);
    const blocksScratchBytes = opts.blocksScratchBytes ?? BLOCKS_SCRATCH_BYTES;
    if (!Number.isInteger(blocksScratchBytes) || blocksScratchBytes < 1) {
      throw new InvalidOptionError(
        `AttentionKernel: blocksScratchBytes must be a positive integer (bytes of the 'blocks' score scratch per chunk), got ${blocksScratchBytes}`,
      );
    }
    const kvDtype = opts.kvDtype ?? 'f32';
    if (!KV_DTYPES.includes(kvDtype))
      throw new InvalidOptionError(
        `AttentionKernel: kvDtype must be one of ${KV_DTYPES.join(', ')}, got ${JSON.stringify(kvDtype)}`,
      );
    if (!kvDtypeFits(kvDtype, D))
      throw new InvalidOptionError(
        `AttentionKernel: an f16 KV cache needs a head size that is a multiple of 8 (at most ${ATTENTION_MAX_HEAD_DIM}), got ${D}; use kvDtype 'f32'`,
      );
    const { decode, prompt } = fitTo(opts, D);
    // The 'lanes' variant (decode, one-token prompts) runs decode_lanes at DECODE_LANES; the passes
    // after 'pairs' / 'blocks' run it at LANES ('lanes' role). Decode 'subgroup' is decode_sg, which
    // also takes the one-token prompts of prompt 'subgroup'.
    const decodeRole: Role = decode === 'lanes' ? 'decodeLanes' : decode === 'subgroup' ? 'sgDecode' : decode;
    const roles = new Set<Role>([decodeRole]);
    if (prompt === 'tiled') roles.add('tiled').add('query');
    else if (prompt === 'pairs') roles.add('pairs').add('lanes');
    else if (prompt === 'blocks') roles.add('qt').add('scores').add('softmax').add('pv').add('pairs').add('lanes');
    else if (prompt === 'subgroup') roles.add('sgPrompt').add(decode === 'subgroup' ? 'sgDecode' : 'decodeLanes');
    else roles.add('query');
    const specs = AttentionKernel.specs(D, opts);
    const list = [...roles];
    // f16 caches: KV_F16 on every pipeline that touches the cache (att_qt and att_softmax do not);
    // f32 ones keep the modules' default, so their pipelines are exactly the f32-only ones.
    const constants = (r: Role) =>
      kvDtype === 'f16' && r !== 'qt' && r !== 'softmax' ? { ...specs[r][2], KV_F16: 1 } : specs[r][2];
    const built = await Promise.all(list.map((r) => ctx.pipeline(specs[r][0], specs[r][1], constants(r))));
    const pipes = Object.fromEntries(list.map((r, i) => [r, built[i]!]));
    const sgQueries = opts.subgroupLanes;
    return new AttentionKernel(ctx, D, decode, prompt, pipes, sgQueries, blocksScratchBytes, kvDtype);
  }

  /** Module, entry point and override constants of each role's pipeline at head size D. */
  private static specs(D: number, p: AttentionProfile): Record<Role, [string, string, Record<string, number>]> {
    const HD4 = D / 4;
    return {
      query: ['attention', D % 4 === 0 ? 'main_vec4' : 'main', { WG: QUERY_WG }],
      wide: ['attention', 'main_vec4', { WG: p.decodeWg }],
      lanes: ['attention', 'decode_lanes', { HD4, LANES }],
      decodeLanes: ['attention', 'decode_lanes', { HD4, LANES: DECODE_LANES }],
      pairs: ['attention+attention_prompt', 'prefill_lanes', { HD4, LANES: LANES }],
      tiled: ['attention+attention_prompt', 'tiled_vec4', { WG: QUERY_WG }],
      qt: ['attention+attention_prompt', 'att_qt', { LANES: BLOCK_LANES }],
      scores: ['attention+attention_prompt', 'att_scores', {}],
      softmax: ['attention+attention_prompt', 'att_softmax', { LANES: BLOCK_LANES }],
      pv: ['attention+attention_prompt', 'att_pv', {}],
      sgDecode: [
        'attention+attention_subgroups',
        'decode_sg',
        { HD4, SGA: SG_DECODE_LANES, WPL: Math.ceil(HD4 / SG_DECODE_LANES) },
      ],
      sgPrompt: [
        'attention+attention_subgroups',
        'prefill_sg',
        { HD4, SGA: p.subgroupLanes, WPL: Math.ceil(HD4 / p.subgroupLanes), QS: p.subgroupLanes },
      ],
    };
  }

  /**
   * The scratch variant 'blocks' needs for T tokens over a cache of `cap` slots, width C, nHead
   * heads: tokens go in chunks of `tc` (a multiple of 8) so that the scores [nHead, cap, tc] f32
   * stay within blocksScratchBytes and the binding limit; `scores` and `queries` ([nHead, D, tc] =
   * C x tc) are the two buffers' f32 counts. All 0 where this kernel has no 'blocks' for head size
   * C / nHead.
   */
  blocksScratch(T: number, cap: number, C: number, nHead: number): { scores: number; queries: number; tc: number } {
    if (!this.pipes.scores || C / nHead !== this.headDim) return { scores: 0, queries: 0, tc: 0 };
    const budget = Math.min(this.blocksScratchBytes, this.ctx.limits.maxStorageBufferBindingSize);
    const perToken = nHead * cap * 4;
    const fit = Math.max(BLOCK_TOKENS, Math.floor(budget / perToken / BLOCK_TOKENS) * BLOCK_TOKENS);
    const tc = Math.min(Math.ceil(T / BLOCK_TOKENS) * BLOCK_TOKENS, fit);
    return { scores: nHead * cap * tc, queries: C * tc, tc };
  }

  /**
   * The kernel the profile runs for a step of T tokens: `decode` for writeKv steps (one token per
   * row), else the prompt family at T (`scratch`: whether a 'blocks' scratch is given).
   */
  variantFor(T: number, o: { writeKv?: boolean; scratch?: boolean } = {}): AttentionVariant {
    if (o.writeKv) return this.decode;
    switch (this.prompt) {
      case 'tiled':
        return T >= TILED_MIN_T ? 'tiled' : 'query';
      case 'blocks':
        if (o.scratch && T >= BLOCKS_MIN_T) return 'blocks';
        return T >= 2 ? 'pairs' : 'lanes';
      case 'pairs':
        return T >= 2 ? 'pairs' : 'lanes';
      case 'subgroup':
        return T >= 2 || this.pipes.sgDecode ? 'subgroup' : 'lanes';
      default:
        return this.prompt;
    }
  }

  /** The variant `bind` runs (asked for, or variantFor), checked against what this kernel built. */
  resolveVariant(
    T: number,
    o: { variant?: AttentionVariant; writeKv?: boolean; scratch?: boolean },
    label = 'attention',
  ): AttentionVariant {
    const v = o.variant ?? this.variantFor(T, o);
    const has: Record<AttentionVariant, boolean> = {
      query: !!this.pipes.query,
      wide: !!this.pipes.wide,
      lanes: !!(this.pipes.decodeLanes ?? this.pipes.lanes),
      pairs: !!this.pipes.pairs,
      blocks: !!this.pipes.scores,
      tiled: !!this.pipes.tiled,
      // writeKv steps need decode_sg; single tokens take it where built, else prefill_sg
      subgroup: o.writeKv ? !!this.pipes.sgDecode : !!(this.pipes.sgPrompt ?? (T === 1 && this.pipes.sgDecode)),
    };
    if (!Object.hasOwn(has, v))
      throw new ShapeError(`${label}: variant must be one of ${Object.keys(has).join(', ')}, got ${String(v)}`);
    if (!has[v])
      throw new ShapeError(
        `${label}: variant '${v}' is not built by this kernel (decode '${this.decode}', prompt '${this.prompt}' at head size ${this.headDim}); create it with a profile naming it`,
      );
    if (o.writeKv && !ONE_QUERY.has(v))
      throw new ShapeError(
        `${label}: writeKv (tokens in distinct rows, a decode step) needs the one-query kernels, not variant '${v}'`,
      );
    return v;
  }

  bind(owner: Owned, a: AttentionArgs, label = 'attention'): Dispatch[] {
    const s = this.checkArgs(a, label);
    const v = this.resolveVariant(
      s.T,
      { variant: a.variant, writeKv: a.writeKv, scratch: a.scratch !== undefined },
      label,
    );
    const inputs = AttentionKernel.inputs(a);
    const one = (role: Role, name: string, wgs: number, skip: { tiled?: number; pairs?: number } = {}) =>
      this.dispatch(owner, s, this.pipes[role]!, name, wgs, inputs, skip);
    const { T, nHead } = s;
    switch (v) {
      case 'tiled':
        // Tiles of one row (prompts) share K/V loads; the second dispatch does the tokens of tiles
        // that mix rows or wrap the ring, one by one, and skips all others.
        return [
          one('tiled', `${label}.tiled`, Math.ceil(T / TILE_TOKENS) * nHead),
          one('query', `${label}.rest`, T * nHead, { tiled: 1 }),
        ];
      case 'blocks':
        return this.bindBlocks(owner, a, s, label);
      case 'pairs':
        // LANES (token pair, head) invocations per workgroup: index * LANES + lane = pair * nHead + head;
        // then decode_lanes does the tokens of pairs that could not share (and skips all others).
        return [
          one('pairs', `${label}.pairs`, Math.ceil((Math.ceil(T / 2) * nHead) / LANES)),
          one('lanes', `${label}.rest`, Math.ceil((T * nHead) / LANES), { pairs: 1 }),
        ];
      case 'subgroup':
        // decode steps and single tokens: decode_sg where built, one workgroup (one subgroup) per
        // (token, head); prompts: prefill_sg, one per (block of sgQueries tokens, head).
        if (this.pipes.sgDecode && (a.writeKv || T === 1)) return [one('sgDecode', label, T * nHead)];
        return [one('sgPrompt', `${label}.sg`, Math.ceil(T / this.sgQueries) * nHead)];
      case 'lanes': {
        // n (token, head) pairs per workgroup: workgroup index * n + lane = token * nHead + head.
        const [role, n]: [Role, number] = this.pipes.decodeLanes ? ['decodeLanes', DECODE_LANES] : ['lanes', LANES];
        return [one(role, label, Math.ceil((T * nHead) / n))];
      }
      default:
        return [one(v, label, T * nHead)]; // 'query', 'wide': a workgroup per (token, head)
    }
  }

  /** Checks the arguments (shapes, head size, aliasing); the step's sizes. */
  private checkArgs(a: AttentionArgs, label: string): Step {
    if (a.kCache.shape.length !== 3)
      throw new ShapeError(`${label}: kCache must be 3-D [rows, capacity, C], got [${a.kCache.shape.join(', ')}]`);
    const [rows, cap, C] = a.kCache.shape as [number, number, number];
    if (a.qkv.shape.length !== 2)
      throw new ShapeError(`${label}: qkv must be 2-D [T, 3C], got [${a.qkv.shape.join(', ')}]`);
    const T = a.qkv.shape[0]!;
    const nHead = a.nHead;
    if (!Number.isInteger(nHead) || nHead < 1 || C % nHead !== 0)
      throw new ShapeError(`${label}: nHead must be a positive divisor of C = ${C}, got ${nHead}`);
    if (C / nHead !== this.headDim)
      throw new ShapeError(
        `${label}: head size ${C / nHead} (C ${C} / nHead ${nHead}), but this kernel was built for head size ${this.headDim}`,
      );
    expectTensor(`${label} kCache`, a.kCache, [rows, cap, C], [this.kvDtype]);
    expectTensor(`${label} vCache`, a.vCache, [rows, cap, C], [this.kvDtype]);
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
    return { T, C, nHead, rows, cap, writeKv: a.writeKv === true };
  }

  /** [binding, resource]: params at 0, then qkv, meta, kCache, vCache, out (every entry point but the blocks passes uses them all). */
  private static inputs(a: AttentionArgs): Array<[number, GPUBindingResource]> {
    return [
      [1, binding(a.qkv)],
      [2, binding(a.meta)],
      [3, binding(a.kCache)],
      [4, binding(a.vCache)],
      [5, binding(a.out)],
    ];
  }

  /** One dispatch of `workgroups` workgroups (wrapped into y past the limit) with the step's params. */
  private dispatch(
    owner: Owned,
    s: Step,
    pipeline: GPUComputePipeline,
    name: string,
    workgroups: number,
    resources: Array<[number, GPUBindingResource]>,
    skip: { tiled?: number; pairs?: number } = {},
    chunk = { tBase: 0, tc: 0 },
  ): Dispatch {
    const [gx, gy] = grid(this.ctx, name, workgroups);
    const D = s.C / s.nHead;
    const params = owner.uniform(`${name}.params`, [
      s.T,
      s.C,
      s.nHead,
      D,
      s.rows,
      s.cap,
      f32bits(1 / Math.sqrt(D)),
      gx,
      NAN_BITS,
      skip.tiled ?? 0,
      s.writeKv ? 1 : 0,
      skip.pairs ?? 0,
      chunk.tBase,
      chunk.tc,
    ]);
    const bindGroup = this.ctx.device.createBindGroup({
      label: name,
      layout: pipeline.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: params }, ...resources.map(([b, resource]) => ({ binding: b, resource }))],
    });
    return { family: 'attention', label: name, pipeline, bindGroup, workgroups: [gx, gy, 1] };
  }

  /** 'blocks': its scratch checked, then per chunk of tc tokens q transposed, scores, softmax, P V; then decode_lanes for the rest. */
  private bindBlocks(owner: Owned, a: AttentionArgs, s: Step, label: string): Dispatch[] {
    const { T, C, nHead, cap } = s;
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
    // Bindings each pass uses (an 'auto' layout has only those): qt qkv -> queries (7); scores
    // meta, kCache, queries -> scores (6); softmax meta, scores; pv meta, vCache, scores -> out.
    const all: Array<[number, GPUBindingResource]> = [
      ...AttentionKernel.inputs(a),
      [6, binding(a.scratch.scores)],
      [7, binding(a.scratch.queries)],
    ];
    const use = (...bs: number[]) => all.filter(([n]) => bs.includes(n));
    const p = this.pipes;
    const d: Dispatch[] = [];
    for (let t0 = 0; t0 < T; t0 += need.tc) {
      const n = Math.min(need.tc, T - t0);
      const chunk = { tBase: t0, tc: need.tc };
      const perToken = Math.ceil((need.tc * nHead) / BLOCK_LANES);
      d.push(this.dispatch(owner, s, p.qt!, `${label}.qt`, perToken, use(1, 7), {}, chunk));
      const scoreGroups = Math.ceil(n / (BLOCK_TOKENS * BLOCK_LANES)) * nHead;
      d.push(this.dispatch(owner, s, p.scores!, `${label}.scores`, scoreGroups, use(2, 3, 6, 7), {}, chunk));
      d.push(this.dispatch(owner, s, p.softmax!, `${label}.softmax`, perToken, use(2, 6), {}, chunk));
      d.push(
        this.dispatch(owner, s, p.pv!, `${label}.pv`, Math.ceil(n / BLOCK_TOKENS) * nHead, use(2, 4, 5, 6), {}, chunk),
      );
    }
    // decode_lanes for the tokens of blocks that do not qualify (it skips all others)
    d.push(
      this.dispatch(owner, s, p.lanes!, `${label}.rest`, Math.ceil((T * nHead) / LANES), AttentionKernel.inputs(a), {
        pairs: 2,
      }),
    );
    return d;
  }
}
