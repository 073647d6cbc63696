import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { f16BitsToF32, f32ToF16Bits, packF16, unpackF16 } from '../src/kernels/f16.js';

test('f16 conversion: exact values, rounding to nearest even, overflow, subnormals', () => {
  assert.is(f32ToF16Bits(1), 0x3c00);
  assert.is(f32ToF16Bits(-2), 0xc000);
  assert.is(f32ToF16Bits(65504), 0x7bff);
  assert.is(f32ToF16Bits(65520), 0x7c00); // rounds up to Inf
  assert.is(f32ToF16Bits(2 ** -24), 0x0001); // smallest subnormal
  assert.is(f32ToF16Bits(1 + 2 ** -11), 0x3c00); // tie -> even (down)
  assert.is(f32ToF16Bits(1 + 3 * 2 ** -11), 0x3c02); // tie -> even (up)
  assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(NaN))));
  // every half round-trips exactly
  for (let h = 0; h < 0x7c00; h++) assert.is(f32ToF16Bits(f16BitsToF32(h)), h);
});

test('packF16 pads odd rows and round-trips through unpackF16', () => {
  const src = Float32Array.from([1, 2, 3, -4, 0.5, 6]);
  const w = packF16(src, 2, 3);
  assert.is(w.length, 4);
  assert.is(w[1]! >>> 16, 0); // pad half is zero
  assert.equal(Array.from(unpackF16(w, 2, 3)), [1, 2, 3, -4, 0.5, 6]);
});

// packF16 reads a Float32Array's bits and rounds normal halves with integer code of its own; it
// must give f32ToF16Bits's answer for every float32: random bit patterns (every exponent, NaN and
// Inf included) and the edges of the fast path (2^-14, 65520, the largest value that rounds to
// 65504, ties to even on both sides), in even rows (one word per pair) and odd ones (padded).
test('packF16 of a Float32Array matches f32ToF16Bits bit for bit', () => {
  const bits: number[] = [0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0x7f800001, 0xffc00000];
  for (const edge of [0x38800000, 0x477ff000, 0x477fefff, 0x33000000, 0x3f801000, 0x3f803000, 0x3f800fff, 0x3f801001]) {
    for (const d of [-2, -1, 0, 1, 2]) bits.push(edge + d, (edge + d) | 0x80000000);
  }
  let s = 12345;
  for (let i = 0; i < 400_000; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0; // LCG over all 32-bit patterns
    bits.push(s);
  }
  while (bits.length % 6 !== 0) bits.push(0x3c000000);
  const f = new Float32Array(Uint32Array.from(bits).buffer);
  for (const cols of [2, 3, 6]) {
    const rows = f.length / cols;
    const fast = packF16(f, rows, cols);
    const wpr = Math.ceil(cols / 2);
    let bad = 0;
    let first = '';
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const w = fast[r * wpr + (c >> 1)]!;
        const got = c & 1 ? w >>> 16 : w & 0xffff;
        const want = f32ToF16Bits(f[r * cols + c]!);
        if (got !== want && bad++ === 0)
          first = `float bits 0x${(bits[r * cols + c]! >>> 0).toString(16)}: 0x${got.toString(16)}, want 0x${want.toString(16)}`;
      }
    }
    assert.is(bad, 0, `cols ${cols}: ${bad} mismatches, first ${first}`);
  }
});

test.run();
