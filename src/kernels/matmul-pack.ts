/**
 * Host-side weight layouts the matmul kernels read (shaders/matmul_gemv.wgsl): 16-byte aligned
 * rows, and column panels, the layout of the 'kn' weights and the transposed LM head on profiles
 * whose GEMV is gemv_kn_cols (MatmulProfile.panel). The engine's uploads lay weights out with
 * these; the kernels never re-lay anything.
 */
import { ShapeError } from '../errors.js';
import { isPanelWidth, storedShape } from '../gpu/common.js';
import { packF16 } from './f16.js';
import type { WeightDType } from './matmul-args.js';
import { packInts, quantize } from './quant.js';

/**
 * Whether rows of `cols` elements of `dtype` are whole units of the matmul's vector loads (f32:
 * cols % 4, a 16-byte word; f16, q8, q4: cols % 8: 16, 8 or 4 bytes), so the GEMVs read them
 * unit by unit; gemv_kn_cols, and so panels, need it.
 */
export function alignedRows(cols: number, dtype: 'f32' | 'f16' | 'q8' | 'q4'): boolean {
  return cols % (dtype === 'f32' ? 4 : 8) === 0;
}

/** A zeroed array of `n` of src's element type (quantized integers stay bytes, f16 words words), else f32. */
function like(src: ArrayLike<number>, n: number): Float32Array | Int8Array | Uint32Array {
  if (src instanceof Int8Array) return new Int8Array(n);
  return src instanceof Uint32Array ? new Uint32Array(n) : new Float32Array(n);
}
type Typed = Float32Array | Int8Array | Uint32Array;

/**
 * The transpose [cols, rows] of a row-major [rows, cols] matrix, laid out in column panels as
 * packPanels would lay it: panel q is source rows [q * panel, q * panel + panel) as a [cols, panel]
 * block, the last zero-padded. The CPU-adapter LM head reads wte chunks this way.
 */
export function packPanelsTransposed<T extends Typed>(src: T, rows: number, cols: number, panel: number): T;
export function packPanelsTransposed(src: ArrayLike<number>, rows: number, cols: number, panel: number): Float32Array;
export function packPanelsTransposed(src: ArrayLike<number>, rows: number, cols: number, panel: number): Typed {
  if (!isPanelWidth(panel))
    throw new ShapeError(`packPanelsTransposed: panel must be an even integer >= 2, got ${panel}`);
  if (src.length !== rows * cols)
    throw new ShapeError(`packPanelsTransposed: ${src.length} values for a [${rows}, ${cols}] matrix`);
  const np = Math.ceil(rows / panel);
  const out = like(src, np * cols * panel);
  // Tiles of TB source columns: a row's TB values are contiguous reads and land in TB output rows
  // of the panel that the next source rows fill further along, so both sides stay in cache (a
  // whole source row at a time scatters its values 4 x panel bytes apart).
  const TB = 32;
  for (let q = 0; q < np; q++) {
    const r0 = q * panel;
    const r1 = Math.min(rows, r0 + panel);
    const base = q * cols * panel - r0;
    for (let c0 = 0; c0 < cols; c0 += TB) {
      const c1 = Math.min(cols, c0 + TB);
      for (let r = r0; r < r1; r++) {
        const i = r * cols;
        const o = base + r;
        for (let c = c0; c < c1; c++) out[o + c * panel] = src[i + c]!;
      }
    }
  }
  return out;
}

/**
 * Re-lays a row-major [rows, cols] matrix into column panels: ceil(cols / panel) panels, each
 * [rows, panel] row-major, the last zero-padded; the layout gemv_kn_cols reads when
 * GpuTensor.panel is set. f16 packing then runs over [panels * rows, panel] (panel is even).
 */
export function packPanels<T extends Typed>(src: T, rows: number, cols: number, panel: number): T;
export function packPanels(src: ArrayLike<number>, rows: number, cols: number, panel: number): Float32Array;
export function packPanels(src: ArrayLike<number>, rows: number, cols: number, panel: number): Typed {
  // Packed f16 words (packMatrix) are panelled in words: any width; elements need an even one.
  const words = src instanceof Uint32Array;
  if (words ? !(Number.isInteger(panel) && panel >= 1) : !isPanelWidth(panel))
    throw new ShapeError(
      `packPanels: panel must be ${words ? 'a positive integer (of words)' : 'an even integer >= 2'}, got ${panel}`,
    );
  if (src.length !== rows * cols)
    throw new ShapeError(`packPanels: ${src.length} values for a [${rows}, ${cols}] matrix`);
  const np = Math.ceil(cols / panel);
  const out = like(src, np * rows * panel);
  for (let q = 0; q < np; q++) {
    const c0 = q * panel;
    const w = Math.min(panel, cols - c0);
    for (let r = 0; r < rows; r++) {
      const o = (q * rows + r) * panel;
      const i = r * cols + c0;
      // A typed row piece is one contiguous copy (a model's load runs this over every matrix).
      if (src instanceof Float32Array || src instanceof Int8Array || src instanceof Uint32Array)
        out.set(src.subarray(i, i + w), o);
      else for (let c = 0; c < w; c++) out[o + c] = src[i + c]!;
    }
  }
  return out;
}

/**
 * A Conv1D weight W[K, N] (row-major `values`) as the matmul kernels read it: stored as `dtype`
 * (f16 halves in pairs; q8 / q4 quantized along K, with their scales: quant.ts), plain or in column
 * panels of `panel` (packPanels). f32 without panels is `values` itself; a 1-D tensor is [K, 1].
 */
export function packMatrix(
  values: Float32Array,
  K: number,
  N: number,
  dtype: WeightDType,
  panel?: number,
): { data: Float32Array | Uint32Array; scales?: Float32Array } {
  const [rows, cols] = storedShape({ shape: [K, N], panel }) as [number, number];
  if (dtype === 'q8' || dtype === 'q4') {
    const qz = quantize(values, K, N, dtype, 'rows');
    const laid = panel ? packPanels(qz.q, K, N, panel) : qz.q;
    return { data: packInts(laid, rows, cols, dtype), scales: qz.scales };
  }
  if (dtype === 'f16' && panel && N % 2 === 0) {
    // Halves first, then panels of their words (pairs never straddle a panel: panel is even): the
    // same words as packing the f32 panels, without a second f32 copy of the matrix.
    return { data: packPanels(packF16(values, K, N), K, N / 2, panel / 2) };
  }
  const laid = panel ? packPanels(values, K, N, panel) : values;
  return { data: dtype === 'f16' ? packF16(laid, rows, cols) : laid };
}

/**
 * Rows [n, C] of wte (row-major `values`) as the tied LM head and the embedding read them: plain
 * rows (the 'nk' W of gemv_nk) or, with `panel`, their transpose [C, n] in column panels
 * (packPanelsTransposed, read as 'kn' by gemv_kn_cols); stored as `dtype` (q8 / q4 quantized along
 * each row, C, with the scales of the n rows: quant.ts 'cols'). f32 rows without panels are
 * `values` itself.
 */
export function packWteRows(
  values: Float32Array,
  n: number,
  C: number,
  dtype: WeightDType,
  panel?: number,
): { data: Float32Array | Uint32Array; scales?: Float32Array } {
  const [rows, cols] = storedShape(panel ? { shape: [C, n], panel } : { shape: [n, C] }) as [number, number];
  if (dtype === 'q8' || dtype === 'q4') {
    const qz = quantize(values, n, C, dtype, 'cols');
    const laid = panel ? packPanelsTransposed(qz.q, n, C, panel) : qz.q;
    return { data: packInts(laid, rows, cols, dtype), scales: qz.scales };
  }
  const laid = panel ? packPanelsTransposed(values, n, C, panel) : values;
  return { data: dtype === 'f16' ? packF16(laid, rows, cols) : laid };
}
