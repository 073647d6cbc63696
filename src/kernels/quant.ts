/**
 * Quantized weight storage, done on the host at load (deterministic: the same checkpoint gives the
 * same bits). A weight is seen as a logical matrix W[K, N]: K the axis the matmul sums over, N its
 * output columns (a Conv1D [in, out] as stored; wte [V, C] with K = C and N = V, as the tied LM
 * head reads it). Both formats are symmetric (zero maps to zero, no offsets to subtract in the
 * kernels' inner loops) with f32 scales:
 *   q8  int8 in [-127, 127], one scale per output column n: s_n = max_k |W[k, n]| / 127. The
 *       kernels sum raw integers times x and multiply the column's sum by s_n once, at the end.
 *   q4  int4 in [-7, 7], one scale per group of QGROUP = 32 consecutive k of a column (GGML's
 *       Q4_0 block size): s_{g,n} = max over the group |W| / 7. A per-column scale cannot hold
 *       4 bits' worth of range (one large weight in a 768-long column flattens the rest to 0);
 *       groups along K keep the error local. Symmetric over asymmetric (a min per group as well):
 *       GPT-2's weight groups are centred near zero, and an offset would cost a second scale
 *       stream and a subtraction per group in every kernel.
 * Rounding: to nearest, halves away from zero; an all-zero column or group gets scale 0.
 * Packing: the integers are laid out exactly as f32 values would be (row-major, or in panels by
 * packPanels / packPanelsTransposed), then packed along the stored last dimension, 4 (q8) or 8
 * (q4) per u32 word, element j of a word in bits [bits * j, bits * j + bits), two's complement;
 * rows are padded to whole words with zeros. The matmul kernels decode an integer by shifting it
 * to the top of a word and clearing the bits below (a power-of-two multiple of it, folded into the
 * scales: shaders/matmul.wgsl), the embedding gather with extractBits (sign-extending).
 * Scales are stored [G, sN] (G = 1 for q8, ceil(K / 32) for q4; sN = N rounded up to a multiple
 * of 8 so that the 8 columns a kernel reads together are two aligned vec4 loads), zero-padded.
 */
import { ShapeError } from '../errors.js';

export type QuantDType = 'q8' | 'q4';

/** K per q4 scale group. */
export const QGROUP = 32;

/** The largest magnitude an integer of the format holds (symmetric range). */
export function qmax(dtype: QuantDType): number {
  return dtype === 'q8' ? 127 : 7;
}

/** Scale groups along K: 1 for q8, ceil(K / QGROUP) for q4. */
export function scaleGroups(dtype: QuantDType, K: number): number {
  return dtype === 'q8' ? 1 : Math.ceil(K / QGROUP);
}

/** The row length of the stored scales: N rounded up to a multiple of 8. */
export function scaleStride(N: number): number {
  return Math.ceil(N / 8) * 8;
}

/** 1.5 x 2^52: v + ROUND - ROUND is v rounded to an integer, ties to even, for |v| < 2^51. */
const ROUND = 6755399441055744;

/**
 * Round to nearest, halves away from zero, for |v| < 2^51 (quantize's are at most 127 and change).
 * Without a branch on v's sign or a Math.round (both ran at about a coin flip's misprediction rate on
 * random weights, the larger part of quantize's time): rounding by adding ROUND, and a rare fix-up for
 * exact halves (|r - v| is exact here), which that takes to even.
 */
function roundHalfAway(v: number): number {
  const r = v + ROUND - ROUND;
  return Math.abs(r - v) === 0.5 ? v + (v > 0 ? 0.5 : -0.5) : r;
}

export interface Quantized {
  /** The integers, laid out as the source matrix (row-major, same shape). */
  q: Int8Array;
  /** The scales [G, scaleStride(N)]. */
  scales: Float32Array;
}

/**
 * Quantizes a row-major matrix `src` of `rows` x `cols` as `dtype`. `kAxis` says which of its axes
 * is K (the one groups run along): 'rows' for a Conv1D [K, N], 'cols' for wte [N, K].
 */
export function quantize(
  src: ArrayLike<number>,
  rows: number,
  cols: number,
  dtype: QuantDType,
  kAxis: 'rows' | 'cols',
): Quantized {
  if (src.length !== rows * cols)
    throw new ShapeError(`quantize: ${src.length} values for a [${rows}, ${cols}] matrix`);
  const [K, N] = kAxis === 'rows' ? [rows, cols] : [cols, rows];
  const gsize = dtype === 'q8' ? K : QGROUP;
  const G = scaleGroups(dtype, K);
  const sN = scaleStride(N);
  const top = qmax(dtype);
  // Both passes walk src in its own order (a column walk of a Conv1D [K, N] strides a whole row per
  // element), in runs of c that share a group: for 'rows' a whole row r, element c's scale at
  // (r / gsize) * sN + c; for 'cols' the gsize elements of one group, one scale at g * sN + r.
  const rowsAxis = kAxis === 'rows';
  const run = rowsAxis ? cols : gsize;
  const step = rowsAxis ? 1 : 0; // how the scale index moves along a run
  const amax = new Float32Array(G * sN); // padding columns keep 0, hence scale 0
  const scales = new Float32Array(G * sN);
  // Int8Array, not Float32Array: a large new array costs its page faults, more than the arithmetic
  // here (BENCHMARKS.md, decision log), and the integers fit in a byte.
  const q = new Int8Array(rows * cols);
  for (let pass = 0; pass < 2; pass++) {
    // The stored (f32) scale is the one the kernels multiply by: quantize with it.
    if (pass === 1) for (let i = 0; i < scales.length; i++) scales[i] = Math.fround(amax[i]! / top);
    for (let r = 0; r < rows; r++) {
      const i0 = r * cols;
      for (let c0 = 0; c0 < cols; c0 += run) {
        const c1 = Math.min(cols, c0 + run);
        const base = rowsAxis ? Math.floor(r / gsize) * sN : Math.floor(c0 / gsize) * sN + r;
        for (let c = c0; c < c1; c++) {
          const at = base + c * step;
          const v = src[i0 + c]!;
          if (pass === 0) {
            const a = Math.abs(v);
            if (a > amax[at]!) amax[at] = a;
          } else {
            const sc = scales[at]!;
            if (sc !== 0) q[i0 + c] = Math.max(-top, Math.min(top, roundHalfAway(v / sc)));
          }
        }
      }
    }
  }
  return { q, scales };
}

/** The float values the kernels compute with: q * its scale (same layout as quantize's input). */
export function dequantize(
  qz: Quantized,
  rows: number,
  cols: number,
  dtype: QuantDType,
  kAxis: 'rows' | 'cols',
): Float32Array {
  const [K, N] = kAxis === 'rows' ? [rows, cols] : [cols, rows];
  const gsize = dtype === 'q8' ? K : QGROUP;
  const sN = scaleStride(N);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const [k, n] = kAxis === 'rows' ? [r, c] : [c, r];
      out[r * cols + c] = qz.q[r * cols + c]! * qz.scales[Math.floor(k / gsize) * sN + n]!;
    }
  }
  return out;
}

/**
 * Packs integers (a [rows, cols] row-major array of values in the format's range) along the last
 * dimension: 4 (q8) or 8 (q4) per u32 word, rows padded to whole words.
 */
export function packInts(q: ArrayLike<number>, rows: number, cols: number, dtype: QuantDType): Uint32Array {
  const bits = dtype === 'q8' ? 8 : 4;
  const per = 32 / bits;
  const mask = (1 << bits) - 1;
  const wpr = Math.ceil(cols / per);
  const out = new Uint32Array(rows * wpr);
  for (let r = 0; r < rows; r++) {
    const i0 = r * cols;
    for (let w = 0; w < wpr; w++) {
      const c0 = w * per;
      const n = Math.min(per, cols - c0);
      let word = 0;
      for (let j = 0; j < n; j++) word |= (q[i0 + c0 + j]! & mask) << (bits * j);
      out[r * wpr + w] = word >>> 0;
    }
  }
  return out;
}
