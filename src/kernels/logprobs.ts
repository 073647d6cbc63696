/**
 * Token log-probabilities over logits [rows, V] (shaders/logprobs.wgsl), one workgroup per row:
 * the log-softmax of each row's target id, the row's argmax and its top-N (id, log-prob) pairs,
 * written as (2 + 2N) u32 words per row, so scoring reads back O(rows x N) bytes, never rows x V.
 */
import type { GpuContext } from '../gpu/device.js';
import { ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, GpuTensor, groups, Owned } from '../gpu/common.js';
import { expectDisjoint } from './elementwise.js';

/** The most alternatives a row can report (the shader's private list length). */
export const MAX_TOP_LOGPROBS = 20;
/** A target id that asks for no target log-prob (the row's word 0 is then NaN). */
export const NO_TARGET = 0xffffffff;

const NEG_INF_BITS = 0xff800000;
const NAN_BITS = 0x7fc00000;

export interface LogprobsArgs {
  logits: GpuTensor; // [rows, V] f32
  targets: GpuTensor; // [rows] u32 (NO_TARGET: none)
  out: GpuTensor; // [rows, 2 + 2 * top] u32
  /** Alternatives per row, 0..MAX_TOP_LOGPROBS. */
  top: number;
}

/** One row of the kernel's output, decoded. */
export interface RowLogprobs {
  /** log p(target | row), natural log; NaN without a target. */
  logprob: number;
  /** The row's most likely id (ties: the smaller id). */
  argmax: number;
  /** The `top` most likely ids, best first (ties: smaller id first), with their log-probs. */
  top: Array<{ id: number; logprob: number }>;
}

/** Words per output row for `top` alternatives. */
export function logprobsRowWords(top: number): number {
  return 2 + 2 * top;
}

/** Decodes rows [0, rows) of the kernel's output words. */
export function decodeLogprobs(words: Uint32Array, rows: number, top: number): RowLogprobs[] {
  const stride = logprobsRowWords(top);
  if (words.length < rows * stride)
    throw new ShapeError(`decodeLogprobs: ${words.length} words hold fewer than ${rows} rows of ${stride}`);
  const f = new Float32Array(words.buffer, words.byteOffset, words.length);
  const res: RowLogprobs[] = [];
  for (let r = 0; r < rows; r++) {
    const o = r * stride;
    const alts: RowLogprobs['top'] = [];
    for (let i = 0; i < top; i++) alts.push({ id: words[o + 2 + 2 * i]!, logprob: f[o + 3 + 2 * i]! });
    res.push({ logprob: f[o]!, argmax: words[o + 1]!, top: alts });
  }
  return res;
}

export class LogprobsKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly pipeline: GPUComputePipeline,
    readonly wg: number,
  ) {}

  /**
   * `wg`: threads per row (the device profile's logprobsWg), a power of two (the tree reductions
   * need it) up to the invocation limit.
   */
  static async create(ctx: GpuContext, wg: number): Promise<LogprobsKernel> {
    const most = Math.min(256, ctx.limits.maxComputeInvocationsPerWorkgroup);
    let size = 1;
    while (size * 2 <= Math.min(wg, most)) size *= 2;
    if (size !== wg) throw new ShapeError(`LogprobsKernel: wg must be a power of two in [1, ${most}], got ${wg}`);
    return new LogprobsKernel(ctx, await ctx.pipeline('logprobs', 'logprobs', { WG: size }), size);
  }

  bind(owner: Owned, a: LogprobsArgs, label = 'logprobs'): Dispatch {
    if (a.logits.shape.length !== 2)
      throw new ShapeError(`${label}: logits must be 2-D [rows, V], got [${a.logits.shape.join(', ')}]`);
    const [rows, V] = a.logits.shape as [number, number];
    if (rows < 1 || V < 1) throw new ShapeError(`${label}: logits must have rows >= 1 and V >= 1, got [${rows}, ${V}]`);
    if (!Number.isInteger(a.top) || a.top < 0 || a.top > MAX_TOP_LOGPROBS)
      throw new ShapeError(`${label}: top must be an integer in [0, ${MAX_TOP_LOGPROBS}], got ${a.top}`);
    expectTensor(`${label} logits`, a.logits, [rows, V], ['f32']);
    expectTensor(`${label} targets`, a.targets, [rows], ['u32']);
    expectTensor(`${label} out`, a.out, [rows, logprobsRowWords(a.top)], ['u32']);
    expectDisjoint(label, 'out', a.out, { logits: a.logits, targets: a.targets });
    const gx = Math.min(rows, this.ctx.limits.maxComputeWorkgroupsPerDimension);
    const gy = groups(this.ctx, label, Math.ceil(rows / gx));
    const params = owner.uniform(`${label}.params`, [rows, V, gx, a.top, NEG_INF_BITS, NAN_BITS, 0, 0]);
    const bindGroup = this.ctx.device.createBindGroup({
      label,
      layout: this.pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: params },
        { binding: 1, resource: binding(a.logits) },
        { binding: 2, resource: binding(a.targets) },
        { binding: 3, resource: binding(a.out) },
      ],
    });
    return { family: 'sampling', label, pipeline: this.pipeline, bindGroup, workgroups: [gx, gy, 1] };
  }
}

// One kernel per context and width: scoring and generation both bind it.
const kernels = new WeakMap<GpuContext, Map<number, Promise<LogprobsKernel>>>();
/** The context's logprobs kernel of `wg` threads per row (its pipeline built once). */
export function logprobsKernelFor(ctx: GpuContext, wg: number): Promise<LogprobsKernel> {
  let byWg = kernels.get(ctx);
  if (!byWg) kernels.set(ctx, (byWg = new Map()));
  let k = byWg.get(wg);
  if (!k) byWg.set(wg, (k = LogprobsKernel.create(ctx, wg)));
  return k;
}
