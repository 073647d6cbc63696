/**
 * The arguments of a linear layer (MatmulKernel.bind) and their checks: the weight as a list of
 * bindable pieces (one unless it is a ChunkedTensor), the shapes, dtypes, alignment and aliasing
 * rules WebGPU and the shaders need. Everything here is host-side validation; no GPU work.
 */
import type { GpuContext } from '../gpu/device.js';
import { ShapeError } from '../errors.js';
import { ChunkedTensor, expectBindable, expectTensor, GpuTensor, storedBytes } from '../gpu/common.js';
import { scaleGroups, scaleStride } from './quant.js';

/** The storages of W a MatmulKernel can read. */
export type WeightDType = 'f32' | 'f16' | 'q8' | 'q4';
export const WEIGHT_DTYPES: readonly WeightDType[] = ['f32', 'f16', 'q8', 'q4'];

export type WeightLayout = 'kn' | 'nk';

export interface MatmulArgs {
  x: GpuTensor; // [M, K] f32
  w: GpuTensor | ChunkedTensor; // 'kn': [K, N]; 'nk': [N, K]; f32, f16, q8 or q4 (with GpuTensor.scales)
  layout: WeightLayout;
  bias?: GpuTensor; // [N] f32
  activation?: 'none' | 'gelu'; // gelu_new, applied after the bias
  accumulate?: boolean; // out += x @ W + bias (gelu, if asked, applies before the add)
  out: GpuTensor; // [M, N] f32; must not overlap x, W or bias
  /**
   * Forces the GEMV or the GEMM whatever M is (tests); default: the profile's range
   * (MatmulProfile.gemvMaxM). The kernel must have built it.
   */
  variant?: 'gemv' | 'gemm';
  /** GEMV only: forces the number of K slices (1 = no split; tests); default: chosen from N and K. */
  splitK?: number;
  /**
   * Layer norm applied to each row of x first (gamma, beta: [K] f32; eps > 0), as GPT-2's ln_1 /
   * ln_2 / ln_f. `scratch` ([M, K] f32) receives LN(x) where it is not fused; default: a buffer
   * the owner allocates.
   */
  ln?: { gamma: GpuTensor; beta: GpuTensor; eps: number; scratch?: GpuTensor };
}

/** A bind's operands, checked: the weight as the pieces it is stored in and how they are laid out. */
export interface Operands {
  M: number;
  K: number;
  N: number;
  /** W as [rows, cols] pieces, one per dispatch (one unless chunked). */
  pieces: GpuTensor[];
  dtype: WeightDType;
  /** The layout the pieces are stored in: a transposed chunked 'nk' W is read as 'kn' pieces. */
  layout: WeightLayout;
  /** Columns per panel of a paneled W (GpuTensor.panel), else undefined. */
  panel: number | undefined;
  activation: 'none' | 'gelu';
}

function isChunked(w: GpuTensor | ChunkedTensor): w is ChunkedTensor {
  return (w as ChunkedTensor).chunks !== undefined;
}

function overlaps(a: GpuTensor, b: GpuTensor): boolean {
  if (a.buffer !== b.buffer) return false;
  const a1 = a.offset + storedBytes(a);
  const b1 = b.offset + storedBytes(b);
  return a.offset < b1 && b.offset < a1;
}

type Weight = Pick<Operands, 'pieces' | 'N' | 'dtype' | 'layout' | 'panel'>;

/** A ChunkedTensor weight (the LM head split by rows), possibly stored transposed in panels. */
function chunkedWeight(ctx: GpuContext, w: ChunkedTensor, a: MatmulArgs, K: number, label: string): Weight {
  if (a.layout !== 'nk') {
    throw new ShapeError(
      `${label}: a ChunkedTensor weight needs layout 'nk' (chunks split W's rows = out columns); got 'kn' with shape [${w.shape.join(', ')}]. Store [K, N] weights whole`,
    );
  }
  const [rows, cols] = w.shape;
  if (cols !== K) throw new ShapeError(`${label}: W is [${rows}, ${cols}] ('nk': [N, K]) but x has K = ${K}`);
  if (!(w.rowsPerChunk >= 1) || w.chunks.length !== Math.ceil(rows / w.rowsPerChunk)) {
    throw new ShapeError(
      `${label}: chunked W [${rows}, ${cols}] with rowsPerChunk ${w.rowsPerChunk} needs ${Math.ceil(rows / w.rowsPerChunk)} chunks, got ${w.chunks.length}`,
    );
  }
  if (!(WEIGHT_DTYPES as readonly string[]).includes(w.dtype))
    throw new ShapeError(`${label}: W dtype must be ${WEIGHT_DTYPES.join(', ')}, got ${w.dtype}`);
  const panel = w.transposed ? w.chunks[0]?.panel : undefined;
  if (w.transposed && panel === undefined)
    throw new ShapeError(
      `${label}: a transposed chunked W must be stored in panels (GpuTensor.panel); chunk 0 has none`,
    );
  w.chunks.forEach((c, i) => {
    const r = Math.min(rows, (i + 1) * w.rowsPerChunk) - i * w.rowsPerChunk;
    expectBindable(ctx, `${label} W chunk ${i}`, c);
    expectTensor(`${label} W chunk ${i}`, c, w.transposed ? [K, r] : [r, K], [w.dtype]);
    checkScales(ctx, `${label} W chunk ${i}`, c, K, r);
    if (c.panel !== panel)
      throw new ShapeError(
        `${label}: W chunk ${i} has panel ${c.panel ?? 'none'}, chunk 0 ${panel ?? 'none'}; chunks must share one layout`,
      );
  });
  return { pieces: w.chunks, N: rows, dtype: w.dtype as WeightDType, layout: w.transposed ? 'kn' : 'nk', panel };
}

/**
 * A q8 / q4 weight piece of K x n (output columns) needs its f32 scales [G, sN] (quant.ts: G = 1
 * or ceil(K / 32), sN = n rounded up to 8); f32 / f16 ones have none.
 */
function checkScales(ctx: GpuContext, what: string, w: GpuTensor, K: number, n: number): void {
  if (w.dtype !== 'q8' && w.dtype !== 'q4') {
    if (w.scales) throw new ShapeError(`${what}: a ${w.dtype} weight has no scales, got some`);
    return;
  }
  if (!w.scales) throw new ShapeError(`${what}: a ${w.dtype} weight needs its scales (GpuTensor.scales)`);
  expectTensor(`${what} scales`, w.scales, [scaleGroups(w.dtype, K), scaleStride(n)], ['f32']);
  expectBindable(ctx, `${what} scales`, w.scales);
}

/** A whole weight, [K, N] ('kn') or [N, K] ('nk'). */
function wholeWeight(ctx: GpuContext, w: GpuTensor, a: MatmulArgs, K: number, label: string): Weight {
  if (w.shape.length !== 2) throw new ShapeError(`${label}: W must be 2-D, got [${w.shape.join(', ')}]`);
  const [r, c] = w.shape as [number, number];
  const wk = a.layout === 'kn' ? r : c;
  if (wk !== K) {
    throw new ShapeError(
      `${label}: W is [${r}, ${c}] (layout '${a.layout}': ${a.layout === 'kn' ? '[K, N]' : '[N, K]'}) but x has K = ${K}`,
    );
  }
  expectBindable(ctx, `${label} W`, w);
  expectTensor(`${label} W`, w, [r, c], WEIGHT_DTYPES);
  checkScales(ctx, `${label} W`, w, K, a.layout === 'kn' ? c : r);
  return {
    pieces: [w],
    N: a.layout === 'kn' ? c : r,
    dtype: w.dtype as WeightDType,
    layout: a.layout,
    panel: w.panel,
  };
}

/** The tensors a dispatch reads, by name (for the aliasing and alignment checks). */
function readsOf(a: MatmulArgs, pieces: GpuTensor[]): Array<[string, GpuTensor]> {
  const reads: Array<[string, GpuTensor]> = [
    ['x', a.x],
    ...pieces.map((p, i): [string, GpuTensor] => [pieces.length > 1 ? `W chunk ${i}` : 'W', p]),
  ];
  if (a.bias) reads.push(['bias', a.bias]);
  if (a.ln) reads.push(['ln gamma', a.ln.gamma], ['ln beta', a.ln.beta]);
  return reads;
}

/**
 * WebGPU validates usage per buffer, not per range: a buffer bound read_write in a dispatch may
 * not be bound read-only in it too, even at disjoint bytes. And every binding offset must be a
 * multiple of minStorageBufferOffsetAlignment.
 */
function checkBindings(ctx: GpuContext, a: MatmulArgs, reads: Array<[string, GpuTensor]>, label: string): void {
  for (const [what, t] of reads) {
    if (t.buffer === a.out.buffer) {
      const how = overlaps(t, a.out) ? 'overlapping' : 'disjoint';
      throw new ShapeError(
        `${label}: out and ${what} share buffer "${a.out.buffer.label}" (${how} bytes ${a.out.offset}.. and ${t.offset}..); WebGPU forbids binding one buffer writable and read-only in the same dispatch: give out its own buffer`,
      );
    }
  }
  const align = ctx.limits.minStorageBufferOffsetAlignment;
  for (const [what, t] of [...reads, ['out', a.out] as [string, GpuTensor]]) {
    if (t.offset % align !== 0)
      throw new ShapeError(
        `${label}: ${what} offset ${t.offset} is not a multiple of minStorageBufferOffsetAlignment ${align}`,
      );
  }
}

/** Checks a bind's arguments and returns its operands; throws ShapeError naming the argument. */
export function readOperands(ctx: GpuContext, a: MatmulArgs, label: string): Operands {
  if (a.layout !== 'kn' && a.layout !== 'nk')
    throw new ShapeError(`${label}: layout must be 'kn' or 'nk', got ${String(a.layout)}`);
  if (a.x.shape.length !== 2) throw new ShapeError(`${label}: x must be 2-D [M, K], got [${a.x.shape.join(', ')}]`);
  const [M, K] = a.x.shape as [number, number];
  expectTensor(`${label} x`, a.x, [M, K], ['f32']);
  if (M < 1 || K < 1) throw new ShapeError(`${label}: x must have M >= 1 and K >= 1, got [${M}, ${K}]`);
  const w = isChunked(a.w) ? chunkedWeight(ctx, a.w, a, K, label) : wholeWeight(ctx, a.w, a, K, label);
  const N = w.N;
  if (N < 1) throw new ShapeError(`${label}: W has N = 0`);
  expectTensor(`${label} out`, a.out, [M, N], ['f32']);
  expectBindable(ctx, `${label} x`, a.x);
  expectBindable(ctx, `${label} out`, a.out);
  if (a.bias) {
    expectTensor(`${label} bias`, a.bias, [N], ['f32']);
    expectBindable(ctx, `${label} bias`, a.bias);
  }
  if (a.ln) {
    for (const [what, t] of [
      ['ln gamma', a.ln.gamma],
      ['ln beta', a.ln.beta],
    ] as const) {
      expectTensor(`${label} ${what}`, t, [K], ['f32']);
      expectBindable(ctx, `${label} ${what}`, t);
    }
    if (!(a.ln.eps > 0 && Number.isFinite(a.ln.eps)))
      throw new ShapeError(`${label}: ln eps must be a finite number > 0, got ${a.ln.eps}`);
  }
  checkBindings(ctx, a, readsOf(a, w.pieces), label);
  const activation = a.activation ?? 'none';
  if (activation !== 'none' && activation !== 'gelu')
    throw new ShapeError(`${label}: activation must be 'none' or 'gelu', got ${String(activation)}`);
  if (a.variant !== undefined && a.variant !== 'gemv' && a.variant !== 'gemm')
    throw new ShapeError(`${label}: variant must be 'gemv' or 'gemm', got ${String(a.variant)}`);
  if (a.splitK !== undefined && !(Number.isInteger(a.splitK) && a.splitK >= 1))
    throw new ShapeError(`${label}: splitK must be an integer >= 1, got ${a.splitK}`);
  return { M, K, ...w, activation };
}
