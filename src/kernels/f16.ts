/**
 * f16 storage helpers shared by the weight loader, kernels' tests and references.
 * Layout: IEEE-754 halves packed in pairs into u32 words along the last (contiguous) dimension,
 * element 2i in the low 16 bits and 2i+1 in the high 16 bits (what WGSL's unpack2x16float reads),
 * each row padded to an even count with a zero half.
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> IEEE half bits, round to nearest even; overflow -> +-Inf, NaN kept. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // Inf / NaN
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow
  if (e <= 0) {
    // subnormal half (or zero)
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++; // may carry into the exponent: still correct
  return sign | half;
}

/** IEEE half bits -> number. */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/**
 * Packs a row-major [rows, cols] float array into u32 words, rows padded to an even count.
 * Loading an f16 model runs this over every matrix (1.5 G values for gpt2-xl), so a Float32Array
 * takes a fast path: its bits are read through a Uint32Array view and a value in the normal half
 * range is rounded with integer operations inline; zero, subnormal, overflowing, Inf and NaN values
 * go through f32ToF16Bits, which the fast path must match bit for bit (tested).
 */
export function packF16(src: ArrayLike<number>, rows: number, cols: number): Uint32Array {
  const wpr = Math.ceil(cols / 2); // words per row
  const out = new Uint32Array(rows * wpr);
  const bits = src instanceof Float32Array ? new Uint32Array(src.buffer, src.byteOffset, src.length) : undefined;
  if (bits && cols % 2 === 0) {
    // Even rows (every model matrix): no padding, word i holds elements 2i and 2i + 1.
    for (let i = 0, n = rows * wpr; i < n; i++) {
      out[i] = (halfBitsOf(bits[2 * i]!) | (halfBitsOf(bits[2 * i + 1]!) << 16)) >>> 0;
    }
    return out;
  }
  const half = bits ? (i: number) => halfBitsOf(bits[i]!) : (i: number) => f32ToF16Bits(src[i]!);
  for (let r = 0; r < rows; r++) {
    const s = r * cols;
    const d = r * wpr;
    for (let w = 0; w < wpr; w++) {
      const c = 2 * w;
      const hi = c + 1 < cols ? half(s + c + 1) : 0;
      out[d + w] = (half(s + c) | (hi << 16)) >>> 0;
    }
  }
  return out;
}

/** f32ToF16Bits of the float32 with bits `b`: inline integer rounding for normal halves. */
function halfBitsOf(b: number): number {
  const abs = b & 0x7fffffff;
  // [2^-14, 65520): a normal half. Rebias the exponent (127 - 15 = 112, << 23 = 0x38000000), keep
  // 10 mantissa bits and round the 13 dropped ones to nearest even without a branch (random
  // weights make a rounding branch a coin flip): add 0xfff, plus 1 when the kept lowest bit is odd,
  // then shift. A carry into the exponent is still the right half (0x477fefff -> 0x7bff).
  if (abs >= 0x38800000 && abs < 0x477ff000) {
    return ((b >>> 16) & 0x8000) | ((abs - 0x38000000 + 0xfff + ((abs >>> 13) & 1)) >>> 13);
  }
  u32[0] = b;
  return f32ToF16Bits(f32[0]!);
}

/** Inverse of packF16: the f16-rounded values as float32, [rows, cols]. */
export function unpackF16(words: Uint32Array, rows: number, cols: number): Float32Array {
  const wpr = Math.ceil(cols / 2);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const w = words[r * wpr + (c >> 1)]!;
      out[r * cols + c] = f16BitsToF32(c & 1 ? w >>> 16 : w & 0xffff);
    }
  }
  return out;
}

/** The value x takes after a round trip through f16 storage. */
export function roundF16(x: number): number {
  return f16BitsToF32(f32ToF16Bits(x));
}
