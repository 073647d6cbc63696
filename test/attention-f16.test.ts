/**
 * The attention kernels over f16 KV caches (kvDtype 'f16'), every variant any device profile runs,
 * against the float64 reference on f16-rounded K/V; and the f16 refusals.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { InvalidOptionError, ShapeError } from '../src/errors.js';
import { poisoned, rejects, withDevice } from './helpers.js';
import { BLOCK_CASES, CASES, check, DECODE_CASES, kernelFor } from './attention-util.js';

// f16 caches (kvDtype 'f16': halves packed two per word, the override KV_F16): every variant any
// profile runs, against the float64 reference over the f16-rounded history, at the f32 tolerance:
// D 64 decode over 3 rows (gpt2's head size), rows interleaved in one step, D 24 (3 words per
// head), the ring window; decode steps writing their own K/V (checked word for word); 'blocks' in
// chunks and prefill_sg over long prompts.
const F16_CASES = [3, 4, 6, 9].map((i) => [i, CASES[i]!] as const);
for (const variant of ['query', 'lanes', 'pairs', 'tiled', 'wide', 'blocks', 'subgroup'] as const) {
  for (const [i, [name, sc]] of F16_CASES) {
    if (variant === 'tiled' && sc.C / sc.nHead > 64) continue;
    test(`attention (${variant}, f16 cache): ${name}`, () => check(sc, 100 + i, variant, false, {}, undefined, 'f16'));
  }
}
for (const [variant, over] of [
  ['query', {}],
  ['lanes', {}],
  ['wide', { decodeWg: 256 }],
  ['subgroup', { decode: 'subgroup' }],
] as const) {
  for (const i of [0, 1]) {
    const [name, sc] = DECODE_CASES[i]!;
    test(`attention (${variant}, writeKv, f16 cache): ${name}`, () =>
      check(sc, 300 + i, variant, true, over, undefined, 'f16'));
  }
}
test(`attention (blocks, f16 cache): ${BLOCK_CASES[4]![0]}`, () =>
  check(BLOCK_CASES[4]![1], 504, 'blocks', false, {}, BLOCK_CASES[4]![2], 'f16'));
test(`attention (subgroup, f16 cache): ${BLOCK_CASES[2]![0]}`, () =>
  check(BLOCK_CASES[2]![1], 502, 'subgroup', false, {}, undefined, 'f16'));

test('an f16 cache: refused at a head size that is not a multiple of 8, and by a kernel built for f32', () =>
  withDevice(async ({ ctx, owned }) => {
    await rejects(
      () => kernelFor(ctx, 12, 'lanes', {}, undefined, 'f16'),
      (e) => e instanceof InvalidOptionError && /multiple of 8.*got 12/.test(e.message),
    );
    const at = await kernelFor(ctx, 16, 'lanes');
    assert.throws(
      () =>
        at.bind(owned, {
          qkv: poisoned(owned, [1, 96]),
          meta: poisoned(owned, [1, 2], 'u32'),
          kCache: poisoned(owned, [1, 4, 32], 'f16'),
          vCache: poisoned(owned, [1, 4, 32], 'f16'),
          out: poisoned(owned, [1, 32]),
          nHead: 2,
        }),
      (e: Error) => e instanceof ShapeError && /expected dtype f32, got f16/.test(e.message),
    );
  }));

test.run();
