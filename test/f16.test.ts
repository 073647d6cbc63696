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

test.run();
