/**
 * Token + position embedding (shaders/embedding.wgsl): out[t, :] = wte[ids[t], :] + wpe[pos_t, :].
 * wte is a ChunkedTensor split by rows; bind() returns one dispatch per chunk, each writing only the
 * tokens whose id lies in its rows (every output row is written exactly once over the list). Chunks
 * are [n, C], or with `transposed` [C, n] in column panels (the CPU-adapter LM head layout).
 * Ids >= V and positions >= nPos do not read out of bounds: such a token's row becomes NaN (the
 * engine validates ids on the CPU first; this is defence in depth).
 */
import type { GpuContext } from '../gpu/device.js';
import { ShapeError } from '../errors.js';
import {
  binding,
  ChunkedTensor,
  Dispatch,
  DType,
  expectBindable,
  expectTensor,
  GpuTensor,
  Owned,
} from '../gpu/common.js';
import { expectDisjoint, grid, NAN_BITS } from './elementwise.js';
import { scaleGroups, scaleStride, type QuantDType } from './quant.js';

/** wte storages, in WTE_FMT order. */
const WTE_DTYPES: readonly DType[] = ['f32', 'f16', 'q8', 'q4'];

export interface EmbeddingArgs {
  ids: GpuTensor; // [T] u32
  meta: GpuTensor; // [T, 2] u32 (row, pos)
  wte: ChunkedTensor; // [V, C] f32, f16, q8 or q4 (chunks with scales), split by rows (chunks [n, C], or transposed [C, n] paneled)
  wpe: GpuTensor; // [nPos, C] f32 or f16
  out: GpuTensor; // [T, C] f32
}

/** Throws ShapeError unless a bound tensor's offset meets the adapter's storage alignment. */
export function expectAligned(ctx: GpuContext, what: string, t: GpuTensor): void {
  const a = ctx.limits.minStorageBufferOffsetAlignment;
  if (t.offset % a !== 0)
    throw new ShapeError(`${what}: byte offset ${t.offset} is not a multiple of minStorageBufferOffsetAlignment ${a}`);
}

export class EmbeddingKernel {
  private constructor(
    private readonly ctx: GpuContext,
    // keyed by `${wteDtype}/${wpeDtype}`
    private readonly pipelines: Map<string, GPUComputePipeline>,
    readonly wg: number,
  ) {}

  static async create(ctx: GpuContext): Promise<EmbeddingKernel> {
    const wg = Math.min(64, ctx.limits.maxComputeInvocationsPerWorkgroup);
    const combos: Array<[DType, DType]> = [];
    for (const a of WTE_DTYPES) for (const b of ['f32', 'f16'] as const) combos.push([a, b]);
    const built = await Promise.all(
      combos.map(([a, b]) =>
        ctx.pipeline('embedding', 'main', { WG: wg, WTE_FMT: WTE_DTYPES.indexOf(a), WPE_F16: b === 'f16' ? 1 : 0 }),
      ),
    );
    return new EmbeddingKernel(ctx, new Map(combos.map(([a, b], i) => [`${a}/${b}`, built[i]!])), wg);
  }

  bind(owner: Owned, a: EmbeddingArgs, label = 'embedding'): Dispatch[] {
    if (a.ids.shape.length !== 1)
      throw new ShapeError(`${label}: ids must be 1-D [T], got [${a.ids.shape.join(', ')}]`);
    const T = a.ids.shape[0]!;
    const [V, C] = a.wte.shape;
    if (a.wpe.shape.length !== 2)
      throw new ShapeError(`${label}: wpe must be 2-D [nPos, C], got [${a.wpe.shape.join(', ')}]`);
    const nPos = a.wpe.shape[0]!;
    expectTensor(`${label} ids`, a.ids, [T], ['u32']);
    expectTensor(`${label} meta`, a.meta, [T, 2], ['u32']);
    expectTensor(`${label} wpe`, a.wpe, [nPos, C], ['f32', 'f16']);
    expectTensor(`${label} out`, a.out, [T, C], ['f32']);
    expectDisjoint(label, 'out', a.out, { ids: a.ids, meta: a.meta, wpe: a.wpe });
    if (!(WTE_DTYPES as readonly DType[]).includes(a.wte.dtype))
      throw new ShapeError(`${label}: wte dtype must be ${WTE_DTYPES.join(', ')}, got ${a.wte.dtype}`);
    if (a.wte.chunks.length === 0 || !(a.wte.rowsPerChunk > 0)) {
      throw new ShapeError(
        `${label}: wte has ${a.wte.chunks.length} chunks of ${a.wte.rowsPerChunk} rows; expected at least one non-empty chunk`,
      );
    }
    const pipeline = this.pipelines.get(`${a.wte.dtype}/${a.wpe.dtype}`)!;
    const pairs = Math.ceil(C / 2);
    const [gx, gy] = grid(this.ctx, label, Math.ceil((T * pairs) / this.wg));
    const out: Dispatch[] = [];
    let row0 = 0;
    a.wte.chunks.forEach((chunk, i) => {
      const rows = Math.min(a.wte.rowsPerChunk, V - row0);
      const what = `${label} wte chunk ${i}`;
      if (rows <= 0)
        throw new ShapeError(
          `${what}: rows start at ${row0} but wte has only ${V} rows (${a.wte.chunks.length} chunks of ${a.wte.rowsPerChunk})`,
        );
      expectTensor(what, chunk, a.wte.transposed ? [C, rows] : [rows, C], [a.wte.dtype]);
      if (!a.wte.transposed !== (chunk.panel === undefined)) {
        throw new ShapeError(
          `${what}: ${a.wte.transposed ? 'a transposed wte chunk must be stored in panels' : 'a row-major wte chunk cannot have panels'} (panel ${chunk.panel ?? 'none'})`,
        );
      }
      expectBindable(this.ctx, what, chunk);
      expectAligned(this.ctx, what, chunk);
      const quant = a.wte.dtype === 'q8' || a.wte.dtype === 'q4';
      if (quant) {
        if (!chunk.scales) throw new ShapeError(`${what}: a ${a.wte.dtype} chunk needs its scales`);
        expectTensor(
          `${what} scales`,
          chunk.scales,
          [scaleGroups(a.wte.dtype as QuantDType, C), scaleStride(rows)],
          ['f32'],
        );
        expectBindable(this.ctx, `${what} scales`, chunk.scales);
        expectAligned(this.ctx, `${what} scales`, chunk.scales);
      }
      expectDisjoint(label, 'out', a.out, { [`wte chunk ${i}`]: chunk });
      const last = i === a.wte.chunks.length - 1;
      if (last && row0 + rows !== V)
        throw new ShapeError(`${label}: wte chunks cover ${row0 + rows} rows, expected ${V}`);
      const params = owner.uniform(`${label}.params${i}`, [
        T,
        C,
        row0,
        rows,
        V,
        nPos,
        last ? 1 : 0,
        gx,
        NAN_BITS,
        chunk.panel ?? 0,
        chunk.scales?.shape[1] ?? 0,
      ]);
      const bindGroup = this.ctx.device.createBindGroup({
        label: `${label}[${i}]`,
        layout: pipeline.getBindGroupLayout(0),
        entries: [
          { binding: 0, resource: params },
          { binding: 1, resource: binding(a.ids) },
          { binding: 2, resource: binding(a.meta) },
          { binding: 3, resource: binding(chunk) },
          { binding: 4, resource: binding(a.wpe) },
          { binding: 5, resource: binding(a.out) },
          { binding: 6, resource: binding(chunk.scales ?? a.meta) },
        ],
      });
      out.push({ family: 'embedding', label: `${label}[${i}]`, pipeline, bindGroup, workgroups: [gx, gy, 1] });
      row0 += rows;
    });
    return out;
  }
}
