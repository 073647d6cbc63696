/**
 * Beam-search candidate kernel (shaders/beam.wgsl): the top K = 2 x beams of
 * beamScores[b] + log_softmax(logits[b])[v] over all B x V, sorted descending (ties to the smaller
 * flat index b * V + v), as out [K, 3] u32 rows (parent b, token v, f32 bits of the score).
 */
import type { GpuContext } from '../gpu/device.js';
import { ShapeError } from '../errors.js';
import { binding, Dispatch, expectTensor, GpuTensor, Owned, tensorBytes } from '../gpu/common.js';

export interface BeamArgs {
  /** [B, V] f32 (B may be 1 at the first step: only the prompt row). */
  logits: GpuTensor;
  /** [B] f32: running sum of log-probabilities of each beam. */
  beamScores: GpuTensor;
  /** [K, 3] u32: (parent, token, score bits), best first. K = 2B unless `k` says otherwise. */
  out: GpuTensor;
  /** Candidates to keep (default 2B); 1 <= k <= min(B * V, MAX_BEAM_K). */
  k?: number;
}

const STORAGE = 0x80 | 0x8 | 0x4; // STORAGE | COPY_DST | COPY_SRC

/** The most candidates one ranking keeps (the merge sorts them in workgroup memory: MAX_K in beam.wgsl). */
export const MAX_BEAM_K = 512;

/** Decodes out [K, 3] u32 as read back: parents, tokens and scores. */
export function decodeBeamCandidates(words: Uint32Array): { parent: number[]; token: number[]; score: number[] } {
  const f = new Float32Array(words.buffer, words.byteOffset, words.length);
  const parent: number[] = [];
  const token: number[] = [];
  const score: number[] = [];
  for (let i = 0; i + 2 < words.length; i += 3) {
    parent.push(words[i]!);
    token.push(words[i + 1]!);
    score.push(f[i + 2]!);
  }
  return { parent, token, score };
}

export class BeamKernel {
  private constructor(
    private readonly ctx: GpuContext,
    private readonly rowTopk: GPUComputePipeline,
    private readonly merge: GPUComputePipeline,
  ) {}

  static async create(ctx: GpuContext): Promise<BeamKernel> {
    const [a, b] = await Promise.all([ctx.pipeline('beam', 'row_topk'), ctx.pipeline('beam', 'merge')]);
    return new BeamKernel(ctx, a, b);
  }

  bind(owner: Owned, a: BeamArgs, label = 'beam'): Dispatch[] {
    if (a.logits.shape.length !== 2)
      throw new ShapeError(`${label}: logits must be 2-D [B, V], got [${a.logits.shape.join(', ')}]`);
    const [B, V] = a.logits.shape as [number, number];
    const K = a.k ?? 2 * B;
    if (!Number.isInteger(K) || K < 1 || K > B * V)
      throw new ShapeError(`${label}: k = ${K} must be an integer in [1, B * V = ${B * V}]`);
    if (K > MAX_BEAM_K) throw new ShapeError(`${label}: k = ${K} candidates; at most ${MAX_BEAM_K} (256 beams)`);
    expectTensor(`${label} logits`, a.logits, [B, V], ['f32']);
    expectTensor(`${label} beamScores`, a.beamScores, [B], ['f32']);
    expectTensor(`${label} out`, a.out, [K, 3], ['u32']);
    const max = this.ctx.limits.maxComputeWorkgroupsPerDimension;
    const gx = Math.min(B, max);
    const gy = Math.ceil(B / gx);
    if (gy > max) throw new ShapeError(`${label}: ${B} beam rows need more than ${max} x ${max} workgroups`);
    // The logits binding starts at an aligned offset; the remainder goes to the shader.
    const align = this.ctx.limits.minStorageBufferOffsetAlignment;
    const start = Math.floor(a.logits.offset / align) * align;
    const logitsOff = (a.logits.offset - start) / 4;
    const logitsRes = {
      buffer: a.logits.buffer,
      offset: start,
      size: a.logits.offset - start + tensorBytes(a.logits.shape, 'f32'),
    };
    const params = owner.uniform(`${label}.params`, [B, V, K, logitsOff, gx, 0, 0, 0]);
    const cand = owner.buffer(`${label}.cand`, B * K * 8, STORAGE);
    const rowGroup = this.ctx.device.createBindGroup({
      label: `${label}.row_topk`,
      layout: this.rowTopk.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: params },
        { binding: 1, resource: logitsRes },
        { binding: 2, resource: binding(a.beamScores) },
        { binding: 3, resource: { buffer: cand } },
      ],
    });
    const mergeGroup = this.ctx.device.createBindGroup({
      label: `${label}.merge`,
      layout: this.merge.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: params },
        { binding: 3, resource: { buffer: cand } },
        { binding: 4, resource: binding(a.out) },
      ],
    });
    return [
      {
        family: 'beam',
        label: `${label}.row_topk`,
        pipeline: this.rowTopk,
        bindGroup: rowGroup,
        workgroups: [gx, gy, 1],
      },
      { family: 'beam', label: `${label}.merge`, pipeline: this.merge, bindGroup: mergeGroup, workgroups: [1, 1, 1] },
    ];
  }
}
